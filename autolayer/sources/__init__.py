"""Feature sources, by kind: a small base and one module per implementation (see base)."""

from autolayer.sources import (  # noqa: F401 - register the "transformers" and "tfidf" kinds
    tfidf,
    transformer,
)
from autolayer.sources.base import (
    SOURCES,
    FeatureSource,
    SourceRecord,
    make_source,
    normalise_layers,
    register_source,
    resolve_spec,
)

__all__ = [
    "SOURCES",
    "FeatureSource",
    "SourceRecord",
    "make_source",
    "normalise_layers",
    "register_source",
    "resolve_spec",
]
