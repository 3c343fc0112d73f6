"""Feature sources, by kind: a small base and one module per implementation (see base)."""

from autolayer.sources import transformer  # noqa: F401 - registers the "transformers" kind
from autolayer.sources.base import (
    SOURCES,
    FeatureSource,
    make_source,
    normalise_layers,
    register_source,
)

__all__ = ["SOURCES", "FeatureSource", "make_source", "normalise_layers", "register_source"]
