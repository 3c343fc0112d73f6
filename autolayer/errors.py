"""One small error hierarchy (the CLI maps each class to an exit code and prints one line),
and library warnings said once per call.

Exit codes: 2 when what was typed must change (a bad option or combination of options, a bad
config file or data: click's usage errors too; a head that diverged, whose config's lr must
come down), 3 a model that cannot be loaded, 4 a cache entry or a saved file (a head) that is
damaged, or a cache entry locked too long, 1 anything else autolayer refuses (and an OS
error).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


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
    """A cache entry or a saved file is damaged, or locked too long: nothing typed is wrong,
    so the fix is to remove the damaged entry or file (or wait), not to change the command."""

    exit_code = 4


class ConfigError(AutolayerError):
    """A configuration file or a parameter value is invalid."""

    exit_code = 2


class DivergedError(ConfigError):
    """A head's training diverged (non-finite loss or weights): its learning rate is too
    high for these features. The search prunes such a trial; ``apply`` refuses to save it;
    ``predict`` refuses the non-finite output of a finite head on finite features (it
    overflows), which training again with a lower lr cures too."""


def warns_once(func: Callable[P, R]) -> Callable[P, R]:
    """Say each distinct warning once per call of ``func`` (a public entry point).

    One warning (a class with a single example, say) comes from several stages — the
    screen, the pairs, the search — each its own call site, and every
    ``warnings.catch_warnings`` on the way resets what Python has already shown: without
    this, ``recommend()`` repeats it about five times where the CLI says it once.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        shown: set[tuple[str, type[Warning]]] = set()
        previous = warnings.showwarning

        def show_once(message, category, filename, lineno, file=None, line=None) -> None:
            if (str(message), category) not in shown:
                shown.add((str(message), category))
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show_once
        try:
            return func(*args, **kwargs)
        finally:
            warnings.showwarning = previous

    return wrapper
