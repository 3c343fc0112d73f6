"""Which models are worth fusing: estimates of fusion gain from held-out probe predictions.

Linear CKA says how similar two representations are, not what fusing them gains: on the
project's own studies its correlation with the measured gain changed sign between data sets.
Ensemble research points at the errors instead (Gontijo-Lopes et al., ICLR 2022: models
that err differently ensemble better). So every estimate here is computed from out-of-fold
predictions of the same linear probe that scores layers, on the same rows and folds for
both models, each at its chosen layer:

- **concat gain**: the probe on both models' features side by side, minus the better model
  alone — a cheap rehearsal of the fusion itself (with a paired standard error over rows);
- **oracle gain**: rows either model gets right, minus the better model (an upper bound);
- **disagreement**, **double fault** and Yule's **Q statistic** of the two error patterns.

Which of these predicts the gain a fusion head really reaches was measured, not assumed:
``studies/complementarity/`` has the validation over every pair of the zoo's models on the
four benchmark sets, and the search and the screen use only what it supports.

Multi-label rows are not simply right or wrong: a row scores the F1 of its predicted label
set against the true one (1 or 0 for a single label, so nothing changes there), each
model's held-out probabilities decided at its best global threshold for that score. The
accuracies, joint, gain and oracle gain average these row scores (the oracle takes the
better of the two on each row); disagreement counts rows whose label sets differ, and
double fault and Q count a row as right when its set is exactly right.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import csr_matrix, hstack, issparse

from autolayer.metrics import row_f1
from autolayer.probe import out_of_fold
from autolayer.task import MultiLabel


@dataclass(frozen=True)
class PairEstimate:
    """Held-out probe evidence on fusing two models (fractions of rows, not percent)."""

    models: tuple[str, str]
    accuracy: tuple[float, float]  # each model alone (multi-label: mean row F1)
    joint: float  # both models' features side by side
    gain: float  # joint − the better model alone
    gain_se: float  # paired standard error of ``gain`` over rows
    oracle_gain: float
    disagreement: float
    double_fault: float
    q_statistic: float
    n_examples: int

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_pairs(
    features: Mapping[str, np.ndarray],  # or a sparse matrix [N, V] (TF-IDF)
    y: np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
) -> list[PairEstimate]:
    """Every pair of ``features`` (model → ``[N, D]`` at its chosen layer, same rows), in
    the mapping's order. Each model alone is probed once; each pair once more, jointly.
    ``class_names`` (``y`` being indices into it) names the classes a warning is about.
    ``y`` may be a multi-label indicator [N, K] (see the module docstring)."""
    probe = {"n_folds": n_folds, "seed": seed, "device": device, "class_names": class_names}
    alone, truth = {}, None
    for name, x in features.items():
        alone[name], truth = _held_out(x, y, **probe)
    out = []
    for a, b in itertools.combinations(features, 2):
        joint, _ = _held_out(_side_by_side(features[a], features[b]), y, **probe)
        out.append(_estimate((a, b), alone[a], alone[b], joint, truth))
    return out


def _side_by_side(a, b):
    """Both feature blocks in one matrix; with a sparse block (TF-IDF), a sparse matrix
    whose dense block is standardised (the dense probe standardises its inputs itself)."""
    if not (issparse(a) or issparse(b)):
        return np.hstack([a, b])
    blocks = [x if issparse(x) else (x - x.mean(0)) / np.maximum(x.std(0), 1e-6) for x in (a, b)]
    return hstack([csr_matrix(x) for x in blocks], format="csr")


def _held_out(x, y: np.ndarray, **probe):
    """Held-out predictions of one feature block and the rows kept: class labels [N'], or
    (multi-label) indicator decisions [N, K] at the threshold best for the row scores."""
    x = x if issparse(x) else np.asarray(x)[:, None]
    predicted, kept = out_of_fold(x, y, **probe)
    if kept.ndim == 1:
        return predicted[0], kept
    threshold = MultiLabel().best_threshold(predicted[0], kept, "samples_f1")
    return MultiLabel(threshold).decide(predicted[0]), kept


def _row_scores(predicted: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's score [N]: 1.0 or 0.0 for a class, the F1 of a label set (multi-label)."""
    if y.ndim == 1:
        return (predicted == y).astype(float)
    import torch

    return row_f1(torch.as_tensor(predicted), torch.as_tensor(y)).numpy()


def _estimate(
    names: tuple[str, str], pa: np.ndarray, pb: np.ndarray, joint: np.ndarray, y: np.ndarray
) -> PairEstimate:
    sa, sb, sj = (_row_scores(p, y) for p in (pa, pb, joint))
    ra, rb = sa == 1, sb == 1
    better = sa if sa.mean() >= sb.mean() else sb
    difference = sj - better
    differ = pa != pb if y.ndim == 1 else (pa != pb).any(1)
    both, neither = np.sum(ra & rb), np.sum(~ra & ~rb)
    only_a, only_b = np.sum(ra & ~rb), np.sum(~ra & rb)
    q_den = both * neither + only_a * only_b
    return PairEstimate(
        models=names,
        accuracy=(float(sa.mean()), float(sb.mean())),
        joint=float(sj.mean()),
        gain=float(difference.mean()),
        gain_se=float(difference.std(ddof=1) / np.sqrt(len(y))) if len(y) > 1 else 0.0,
        oracle_gain=float(np.maximum(sa, sb).mean() - better.mean()),
        disagreement=float(differ.mean()),
        double_fault=float(neither / len(y)),
        q_statistic=float((both * neither - only_a * only_b) / q_den) if q_den else 0.0,
        n_examples=len(y),
    )
