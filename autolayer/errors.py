"""One small error hierarchy: the CLI maps each class to an exit code and prints one line."""

from __future__ import annotations


class AutolayerError(Exception):
    """Base class of every error autolayer raises on purpose (bad input, missing model...)."""

    exit_code = 1


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

    exit_code = 5
