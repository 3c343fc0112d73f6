"""Seeded stratified row samples: one definition for every stage that subsamples.

Datasets too large for a CPU (``LabelledDataset.subsample``) and probes bounded in cost
(``probe_layers(max_examples=...)``) draw the same way, so a sample is reproducible from its
seed whichever stage asked for it.
"""

from __future__ import annotations

import numpy as np


def stratified_rows(labels: np.ndarray, size: int, seed: int, *, per_class: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` rows of ``labels``, class proportions kept.

    ``labels`` are one stratum per row: the class, or a task's strata
    (:meth:`autolayer.task.Task.strata`) where the caller has the task. Each class first
    gets ``per_class`` rows (1 keeps every class, hence the label vocabulary); the rest
    follow class proportions by largest remainders.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    floor = per_class * len(classes)
    quota = per_class + (counts - per_class) * (size - floor) / (len(labels) - floor)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota, kind="stable")[: size - take.sum()]] += 1
    picks = [
        rng.choice(np.flatnonzero(labels == c), k, replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picks))


def rarest_label(indicator: np.ndarray) -> np.ndarray:
    """Each row's stratum for a multi-label indicator [N, K]: its least frequent label.

    Stratifying on the rarest label is what keeps rare labels on every side of a split or a
    fold (stratifying on the first or most common would bury them in the big strata).
    Frequencies are counted over the rows given; ties go to the lowest index; a row with no
    label gets stratum K, its own. Returns int64 [N].
    """
    present = np.asarray(indicator) > 0
    counts = present.sum(axis=0, dtype=np.int64)
    masked = np.where(present, counts, np.iinfo(np.int64).max)
    strata = masked.argmin(axis=1).astype(np.int64)
    strata[~present.any(axis=1)] = present.shape[1]
    return strata


def covering_rows(indicator: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` rows of a multi-label indicator [N, K] that keep every label.

    Strata alone cannot promise the vocabulary (a label that is never a row's rarest has no
    stratum of its own), so one seeded row per label still missing comes first, rarest
    labels first; the rest follow the rarest-label strata by largest remainders. ``size``
    must be at least K.
    """
    rng = np.random.default_rng(seed)
    present = np.asarray(indicator) > 0
    chosen = np.zeros(len(present), dtype=bool)
    for label in np.argsort(present.sum(axis=0), kind="stable"):
        rows = np.flatnonzero(present[:, label])
        if rows.size and not chosen[rows].any():
            chosen[rng.choice(rows)] = True
    missing = size - int(chosen.sum())
    if missing > 0:
        rest = np.flatnonzero(~chosen)
        chosen[rest[stratified_rows(rarest_label(present[rest]), missing, seed)]] = True
    return np.flatnonzero(chosen)
