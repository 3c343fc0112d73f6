"""One small error hierarchy: the CLI maps each class to an exit code and prints one line.

Exit codes: 2 when what was typed must change (a bad option or combination of options, a bad
config file or data: click's usage errors too), 3 a model that cannot be loaded, 4 a damaged
cache entry, 1 anything else autolayer refuses (and an OS error).
"""

from __future__ import annotations

from collections.abc import Sequence


class AutolayerError(Exception):
    """Base class of every error autolayer raises on purpose (bad input, missing model...).

    ``params``: the Python arguments the message names (``max_train_samples``), which the
    CLI shows as its options (``--max-train-samples``) in one table, so that the library
    speaks Python and the command line speaks flags."""

    exit_code = 1

    def __init__(self, message: str = "", *, params: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


class DataError(AutolayerError):
    """A dataset cannot be loaded or is unusable (missing column, one class, bad bytes...)."""

    exit_code = 2


class ModelError(AutolayerError):
    """A model spec cannot be resolved or loaded (unknown alias, offline hub id, no gguf...)."""

    exit_code = 3


class CacheError(AutolayerError):
    """A cache entry is corrupt or does not match what was asked for."""

    exit_code = 4


class ConfigError(AutolayerError):
    """A configuration file or a parameter value is invalid."""

    exit_code = 2


class DivergedError(ConfigError):
    """A head's training diverged (non-finite loss or weights): its learning rate is too
    high for these features. The search prunes such a trial; ``apply`` refuses to save it."""
