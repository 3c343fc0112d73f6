"""Rows as a fidelity of the search: rank trials on samples of the rows, train the best on all.

After the screen, training trial heads is the larger part of a run on a large set (30 heads
on 54k SST-2 rows: 55 % of its CPU), yet ranking configurations rarely needs every row: the
order of heads on a sample mostly holds on all rows, and only the winner must see them all.
So a trial climbs rungs (successive halving over rows): its head trains on a stratified
sample of ``min_rows`` search-train rows; if its validation metric is among the best
``1/factor`` of the trials that reached that rung, it trains again on ``factor`` times as
many rows, and so on up to all of them. Validation is always the whole validation split:
only the training rows shrink, so every rung's value is comparable with the others of the
same rung, and a trial that reaches the top is judged exactly as a full-rows trial.

The promotion rule is Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`
(asynchronous successive halving, ASHA) with the reported step being the rung's number of
rows: it reads every trial's rung values from the study's storage, so a resumed study or
several workers share the rungs with no scheduler of autolayer's own, and TPE ranks a pruned
trial by the rows it reached, then by its value. Being asynchronous it promotes the first
trials of a study while there is little to compare them with (a trial among fewer than
``factor`` at its rung goes on when it is the best so far); a synchronous schedule would
have to stop every worker at each rung.

A trial counts once against ``n_trials`` however many rungs it climbs; baselines (outside
the budget), cross-validated trials (few labels: no rows to spare) and multi-objective
searches (Optuna prunes single objectives only) train on all rows at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autolayer.errors import ConfigError
from autolayer.sampling import covering_rows, stratified_rows

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Ladder:
    """The rungs of one search: nested search-train row samples, smallest first (the top
    rung, every row, is implied), ``factor`` times larger from one to the next."""

    rows: tuple[np.ndarray, ...]
    factor: int

    def pruner(self) -> optuna.pruners.BasePruner:
        """Optuna's asynchronous successive halving over these rungs: a trial reports its
        value at step = its rung's rows, and goes on while it is among the best
        ``1/factor`` of the trials that reached that rung."""
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=len(self.rows[0]), reduction_factor=self.factor
        )


@dataclass(frozen=True)
class Rungs:
    """Rung sizes ``min_rows · factor^k``, each at most half the search-train rows, below
    all of them (the top rung). A set smaller than ``min_rows · factor`` rows gets none:
    there a sample would save too little to pay for a ranking less sure than on all rows."""

    min_rows: int = 1000
    factor: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int):
            raise ConfigError(f"min_rows must be an integer; got {self.min_rows!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int):
            raise ConfigError(f"factor must be an integer; got {self.factor!r}")
        if self.min_rows < 1 or self.factor < 2:
            raise ConfigError(
                f"rungs need min_rows >= 1 and factor >= 2; got {self.min_rows} and {self.factor}"
            )

    def sizes(self, n_rows: int, n_strata: int = 1) -> tuple[int, ...]:
        """The rows of each rung below the top, smallest first (empty: no rungs). A rung
        keeps a row of every class or label, so none is smaller than ``n_strata``."""
        if n_rows < self.min_rows * self.factor:
            return ()
        sizes, size = [], self.min_rows
        while 2 * size <= n_rows:
            sizes.append(size)
            size *= self.factor
        return tuple(s for s in sizes if s >= n_strata)

    def ladder(self, target: np.ndarray, strata: np.ndarray, seed: int) -> Ladder | None:
        """Sorted row indices of ``target`` for each rung, smallest first, nested (a
        promoted trial sees the rows it was ranked on, and more): each drawn from the next
        larger, stratified by ``strata`` and seeded; a multi-label ``target`` (an indicator
        ``[N, K]``) keeps a row of every label (:func:`autolayer.sampling.covering_rows`).
        None when the rows are too few for rungs."""
        target = np.asarray(target)
        multi = target.ndim == 2
        n_strata = target.shape[1] if multi else len(np.unique(strata))
        rows = np.arange(len(target))
        out = []
        for size in reversed(self.sizes(len(target), n_strata)):
            if multi:
                picked = covering_rows(target[rows], size, seed)
            else:
                picked = stratified_rows(strata[rows], size, seed, per_class=1)
            rows = rows[picked]
            out.append(rows)
        return Ladder(tuple(reversed(out)), self.factor) if out else None


@dataclass(frozen=True)
class RungCost:
    """What a study's trials did on one rung: how many trained there, their CPU seconds,
    and the best validation metric seen there."""

    rows: int
    trials: int
    cpu_seconds: float
    best: float


def climbed(records: Iterable[Sequence[Sequence[float]]]) -> tuple[RungCost, ...]:
    """Each rung's cost, smallest first, from the trials' records (a trial's ``rungs``
    attribute: ``[rows, value, CPU seconds]`` per rung it trained on)."""
    by_rows: dict[int, list] = {}
    for record in records:
        for rows, value, seconds in record:
            entry = by_rows.setdefault(int(rows), [0, 0.0, -np.inf])
            entry[0] += 1
            entry[1] += seconds
            entry[2] = max(entry[2], value)
    return tuple(RungCost(rows, *by_rows[rows]) for rows in sorted(by_rows))
