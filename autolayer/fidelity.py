"""Multi-fidelity preparation: pay for full data only for models that can matter.

Extracting every layer of every candidate model on every training text costs models × texts
× depth before anything is decided. Instead:

1. **Screen**: every layer of every model on a stratified sample of the training rows, each
   layer scored by a cross-validated probe (mean and standard error over folds).
2. **Select**: drop a model only when its best layer is clearly below the leader's — more
   than ``z`` standard errors apart on both sides — never one of the ``keep_at_least``
   best, so a fusion partner always survives, and never one whose features, beside a
   surviving model's, lift the probe more than ``z`` standard errors above that model
   alone (a weaker model that complements a stronger one; see
   :mod:`autolayer.complementarity`). A source fitted on the task's texts (TF-IDF) is
   never dropped: it has no forward pass to save, and it is a baseline the search must
   train.
3. **Complete**: the remaining training and validation rows, for survivors only, and only
   up to their deepest kept layer (the backbone is cut there).
4. **Search on rungs of rows**: trial heads train on samples of the search-train rows and
   only the promising ones on all (see :mod:`autolayer.rungs`).

Each stage records its CPU seconds and the texts × layers its backbones computed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.probe import LayerScores
from autolayer.rungs import Rungs


@dataclass(frozen=True)
class Fidelity:
    """How much to screen before completing: ``screen_size`` training rows per model
    (``None``: exhaustive, every row of every model), models within ``z`` standard errors
    of the leader survive, and the ``keep_at_least`` best always do; and on which rungs of
    rows the search ranks its trials (``rungs``; ``None``: every trial on every row)."""

    screen_size: int | None = 2000
    z: float = 2.0
    keep_at_least: int = 2
    n_folds: int = 5
    rungs: Rungs | None = Rungs()  # noqa: RUF009 - frozen, so a shared default is safe

    def __post_init__(self) -> None:
        if self.screen_size is not None and self.screen_size < 1:
            raise ConfigError(f"screen_size must be >= 1; got {self.screen_size}")
        if self.z < 0 or self.keep_at_least < 1:
            raise ConfigError("z must be >= 0 and keep_at_least >= 1")
        if self.rungs is not None and not isinstance(self.rungs, Rungs):
            raise ConfigError(f"rungs must be a Rungs or None; got {self.rungs!r}")

    def screens(self, n_train: int) -> bool:
        """Whether screening saves anything: the sample is smaller than the training rows."""
        return self.screen_size is not None and self.screen_size < n_train

    def check(self, n_train: int, n_classes: int, noun: str = "classes") -> None:
        """A screen too small to cross-validate is an error naming the limit, before work
        (``noun``: what the data's targets are, classes or, multi-label, labels)."""
        if not self.screens(n_train):
            return
        least = n_classes * self.n_folds
        if self.screen_size < least:
            raise ConfigError(
                f"screen_size {self.screen_size} is too small to screen: {n_classes} {noun} "
                f"× {self.n_folds} folds need at least {least} rows (or pass fidelity=None)",
                params=("screen_size", "fidelity=None"),
            )


@dataclass(frozen=True)
class StageCost:
    """What one stage of preparation cost: CPU seconds (all threads) and the texts × layers
    its backbones computed (0 when everything came from the cache)."""

    name: str
    cpu_seconds: float
    texts_layers: int
    note: str = ""


class StageClock:
    """Collects :class:`StageCost` records by stage name: ``with clock.stage(name) as count:``
    adds the block's CPU time to that stage, ``count(texts × layers)`` its backbone work.
    A stage entered once per model adds up across models."""

    def __init__(self) -> None:
        self._stages: dict[str, list] = {}

    @contextlib.contextmanager
    def stage(self, name: str, note: str = "") -> Iterator[Callable[[int], None]]:
        record = self._stages.setdefault(name, [0.0, 0, note])
        start = time.process_time()

        def count(n: int) -> None:
            record[1] += n

        try:
            yield count
        finally:
            record[0] += time.process_time() - start

    def costs(self) -> tuple[StageCost, ...]:
        return tuple(StageCost(name, *record) for name, record in self._stages.items())


def computed(meta: dict, n_layers: int) -> int:
    """Texts × layers an extraction really computed (a cache hit computed nothing)."""
    return 0 if meta.get("cached") else int(meta.get("computed_rows", 0)) * n_layers


def best_estimate(scores: LayerScores, metric: str) -> tuple[int, float, float]:
    """(best layer, its mean score, its standard error over the probe's folds)."""
    layer = int(scores.ranking(metric)[0])
    mean = float(getattr(scores, metric)[layer])
    std = float(getattr(scores, f"{metric}_std")[layer])
    return layer, mean, std / np.sqrt(max(scores.n_folds, 1))


def select(
    screens: dict[str, LayerScores],
    metric: str,
    fidelity: Fidelity,
    pairs: Sequence[PairEstimate] = (),
    keep: Collection[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """(survivors in the given order, dropped model → reason) by the rule in the module
    docstring: a model is dropped only when its interval lies wholly below the leader's
    and no estimate in ``pairs`` shows it complementing a survivor. Those in ``keep`` are
    never dropped (sources fitted on the texts, TF-IDF: dropping one saves no extraction,
    and the search trains it as a baseline, TF-IDF + linear SVM, which the recommendation
    must not lose to)."""
    estimates = {name: best_estimate(s, metric) for name, s in screens.items()}
    ranked = sorted(estimates, key=lambda n: -estimates[n][1])
    leader = ranked[0]
    _, top, top_se = estimates[leader]
    dropped = {}
    for name in (n for n in ranked[fidelity.keep_at_least :] if n not in keep):
        layer, mean, se = estimates[name]
        if mean + fidelity.z * se < top - fidelity.z * top_se:
            dropped[name] = (
                f"best layer {layer}: {100 * mean:.1f} ± {100 * se:.1f} % vs {leader} "
                f"{100 * top:.1f} ± {100 * top_se:.1f} % on the screen "
                f"(more than {fidelity.z:g} standard errors below on both sides)"
            )
    kept = set(screens) - set(dropped)  # rescues are judged against these, in any order
    rescued = {
        name
        for pair in pairs
        for name, partner in (pair.models, pair.models[::-1])
        if name in dropped and partner in kept and complements(pair, fidelity.z)
    }
    dropped = {name: why for name, why in dropped.items() if name not in rescued}
    return [n for n in screens if n not in dropped], dropped


def complements(pair: PairEstimate, z: float) -> bool:
    """Whether the two models side by side clearly beat the better one alone."""
    return pair.gain > z * pair.gain_se
