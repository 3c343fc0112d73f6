"""Where torch work runs: one resolver for every module and command.

Every stage (extraction, probes, CKA, fusion heads) takes the same ``device`` strings, so a
value the CLI's help lists is accepted everywhere, and a device this machine cannot use is a
one-line error before any work, not a CUDA traceback halfway through.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from autolayer.errors import ConfigError

if TYPE_CHECKING:
    import torch

_FORMAT = re.compile(r"(auto|cpu|cuda(:\d+)?|mps)")
HELP = "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when present, else CPU; anything else is checked first."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if not _FORMAT.fullmatch(name):
        raise ConfigError(f"device must be {HELP} Got {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU; "
                "use cpu (or auto)",
                params=("device",),
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available here")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (``None`` keeps torch's default)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1; got {threads!r}")
    import torch

    torch.set_num_threads(threads)
