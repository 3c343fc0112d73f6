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
