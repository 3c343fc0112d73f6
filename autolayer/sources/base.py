"""Feature sources: what turns texts into one vector per state (a transformer's layers).

A source is a small class (like Optuna's samplers): its identity (the cache key of what it
computes), how many states it has, ``embed(texts, layers)``, and what running it up to a
state costs. Sources are registered by kind; :func:`make_source` finds the one that accepts
a model spec. The transformers source accepts everything the model zoo resolves (zoo
aliases, local folders, GGUF files, hub ids), so it is asked last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from autolayer.errors import ConfigError
from autolayer.registry import Registry

Progress = Callable[[int], None]
FALLBACK = "transformers"  # the kind asked last: it accepts any spec the zoo can resolve


class FeatureSource(ABC):
    """Texts → ``[N, len(layers), D]`` float32 features of chosen states (layers).

    Subclasses set ``kind`` and implement ``identity``, ``n_states``, ``width``, ``embed``
    and ``parameters``; the rest has defaults that suit a frozen pretrained model.
    """

    kind: ClassVar[str]
    # True: it learns from the task's training texts (TF-IDF) and implements ``fit``,
    # ``transform``, ``save`` and ``load`` (``check_texts`` if some texts cannot teach it)
    learns: ClassVar[bool] = False
    sparse: ClassVar[bool] = False  # True: its features are a CSR matrix ``[N, D]``
    files: ClassVar[tuple[str, ...]] = ()  # what ``save`` writes (a fitted source's state)

    def __init__(self, spec: str, *, trust_remote_code: bool = False) -> None:
        self.spec = spec
        self.trust_remote_code = trust_remote_code

    @classmethod
    def accepts(cls, spec: str) -> bool:
        """Whether this source handles ``spec`` (the fallback source accepts anything)."""
        return False

    @property
    def name(self) -> str:
        """Short human name for messages."""
        return self.spec

    @property
    @abstractmethod
    def identity(self) -> str:
        """Hash of everything the features depend on (weights, vocabulary…): the cache key."""

    @property
    @abstractmethod
    def n_states(self) -> int:
        """How many states (``L+1`` hidden states for a transformer; 1 for TF-IDF)."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Features per state (``D``)."""

    @abstractmethod
    def embed(
        self,
        texts: Sequence[str],
        layers: Sequence[int],
        *,
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 256,
        max_tokens: int = 8192,
        device: str | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Features of ``texts`` at ``layers`` (sorted state indices) → ``[N, len(layers), D]``."""

    def preload(self, layers: Sequence[int], device: str | None = None) -> None:  # noqa: B027
        """Load what ``embed`` needs (weights, tokenizer) ahead of it, so the time of
        ``embed`` is the per-text cost a prediction pays, not a one-off load. Nothing to
        load by default."""

    @abstractmethod
    def parameters(self, layer: int) -> int:
        """Parameters needed to compute state ``layer`` (a model cut just above it)."""

    def memory_mb(self, layer: int) -> float:
        """Memory to run up to ``layer``: 4 bytes (float32) a parameter by default."""
        return 4 * self.parameters(layer) / 2**20

    @property
    def sentence_encoder(self) -> bool:
        """Whether the last state is a trained sentence embedding (a sentence-transformers
        model): with a few labels, the default the search has to beat (:mod:`autolayer.anchor`)."""
        return False

    def latency_fraction(self, layer: int) -> float:
        """Share of the full-depth time spent computing up to ``layer`` (layer / L)."""
        return max(layer, 1) / max(self.n_states - 1, 1)

    def max_length(self, requested: int) -> int:
        """The tokens per text it really takes for ``requested`` (a model's own limit)."""
        return requested

    def lengths(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Work per text (tokens for a transformer): texts are processed longest first, and
        the total is recorded with the features."""
        return np.ones(len(texts), dtype=np.int64)

    # What a source that learns from texts (``learns``) implements: it is fitted on the
    # training rows only, gives the features of its one state with ``transform`` instead of
    # ``embed``, and travels with a saved model as ``files``. A pretrained source has
    # nothing to learn, hence none of these.

    def fit(self, texts: Sequence[str]) -> FeatureSource:
        """Learn from the training ``texts`` (never validation or test rows); ``self``."""
        raise NotImplementedError(f"{self.kind} does not learn from texts")

    def check_texts(self, texts: Sequence[str]) -> None:  # noqa: B027
        """Refuse, cheaply and before any other work, training ``texts`` :meth:`fit` could
        learn nothing from. Any texts by default."""

    def transform(self, texts: Sequence[str]) -> object:
        """Features of ``texts`` from the fitted source: ``[N, D]`` (CSR when ``sparse``)."""
        raise NotImplementedError(f"{self.kind} does not learn from texts")

    def save(self, directory: Path) -> None:
        """Write what :meth:`fit` learnt into ``directory`` (the ``files``)."""
        raise NotImplementedError(f"{self.kind} does not learn from texts")

    @classmethod
    def load(cls, directory: Path) -> FeatureSource:
        """The fitted source :meth:`save` wrote into ``directory``."""
        raise NotImplementedError(f"{cls.kind} does not learn from texts")


SOURCES = Registry("feature source", "kind")
register_source = SOURCES.register  # class decorator: @register_source("kind")


def source_class(spec: str) -> type[FeatureSource]:
    """The kind of source a model spec names, without building it: the first registered
    kind that accepts it, else the transformers source (zoo alias, folder, GGUF, hub id)."""
    for kind, cls in SOURCES.items():
        if kind != FALLBACK and cls.accepts(spec):
            return cls
    return SOURCES[FALLBACK]


def make_source(spec: str, *, trust_remote_code: bool = False) -> FeatureSource:
    """The source for a model spec (see :func:`source_class`)."""
    return source_class(spec)(spec, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class SourceRecord:
    """A model spec resolved once, where it enters a run (:func:`resolve_spec`), and then
    carried whole: what the later stages ask of its source, so that none turns the spec
    back into a source (each time a zoo lookup, a folder hash, a config read).

    ``max_length`` is the tokens per text the features really take (the model's own limit
    may cut the option's): what the cache keys them by and what a config records.
    ``learns``: the source learns from the task's texts (fit, transform, and ``files`` it
    saves beside a model); ``sparse``: its features are a sparse matrix (which a dense-only
    head cannot read, priced by its non-zeros). ``source`` is the resolved source,
    unfitted, for what is only computed on demand (each layer's cost); its weights are
    loaded by the extraction, which builds its own source so that a search does not hold
    every model's weights.
    """

    spec: str
    identity: str
    n_states: int
    max_length: int
    learns: bool
    sparse: bool
    files: tuple[str, ...]
    sentence_encoder: bool
    parameters: int  # of the whole model (every state)
    trust_remote_code: bool
    source: FeatureSource = field(compare=False, repr=False)

    def unfitted(self) -> FeatureSource:
        """A new source of this spec, for a source that learns from texts: each fit is its
        own, and the record's source stays unfitted."""
        return type(self.source)(self.spec, trust_remote_code=self.trust_remote_code)


def resolve_spec(spec: str, *, max_length: int, trust_remote_code: bool = False) -> SourceRecord:
    """The record of ``spec`` (a ModelError when it names nothing loadable), its features
    ``max_length`` tokens per text at most."""
    source = make_source(spec, trust_remote_code=trust_remote_code)
    last = source.n_states - 1
    return SourceRecord(
        spec=spec,
        identity=source.identity,
        n_states=source.n_states,
        max_length=source.max_length(max_length),
        learns=source.learns,
        sparse=source.sparse,
        files=source.files,
        sentence_encoder=source.sentence_encoder,
        parameters=source.parameters(last),
        trust_remote_code=trust_remote_code,
        source=source,
    )


def normalise_layers(layers: Sequence[int] | None, n_states: int) -> tuple[int, ...]:
    """Sorted unique hidden-state indices; negatives count from the end; None means all."""
    if layers is None:
        return tuple(range(n_states))
    out = set()
    for index in layers:
        if not -n_states <= index < n_states:
            raise ConfigError(
                f"layer {index} is out of range: this model has hidden states 0..{n_states - 1}"
            )
        out.add(index % n_states)
    if not out:
        raise ConfigError("layers must name at least one hidden state")
    return tuple(sorted(out))
