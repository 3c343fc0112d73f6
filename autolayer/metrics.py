"""The validation metrics: one definition used by the probes, the search and the head.

Single-label metrics are computed on class indices, multi-label ones on 0/1 indicator
decisions ``[N, K]``; all with torch, batched over a leading axis of predictions (one row
per layer, for the probes). They agree with scikit-learn's ``accuracy_score`` and
``f1_score`` (macro-F1 over the labels present in truth or predictions; samples-F1 scoring
a row with neither true nor predicted labels 1, ``zero_division=1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first computation, not with the names (CLI help)
    import torch

METRICS = ("accuracy", "macro_f1")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")
ALL_METRICS = (*METRICS, *(m for m in MULTI_LABEL_METRICS if m not in METRICS))


def accuracy(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Accuracy per row of ``pred`` [L, M] (or [M]) against ``truth`` [M]."""
    return _mean((pred == truth).double(), weight)


def macro_f1(
    pred: torch.Tensor,
    truth: torch.Tensor,
    n_classes: int | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Macro-F1 per row of ``pred`` [L, M] against ``truth`` [M] → [L]: class indices
    (``n_classes`` of them), or indicator decisions [L, M, K] against ``truth`` [M, K].

    Averages over the classes present in truth or predictions, as sklearn's ``f1_score``
    does for class indices; a class never predicted scores 0, and so does a prediction
    with nothing true or predicted at all.
    """
    if truth.ndim == 1:
        from torch.nn.functional import one_hot

        pred, truth = one_hot(pred, n_classes), one_hot(truth, n_classes)
    tp, fp, fn = _label_counts(pred, truth, weight)
    present = (tp + fp + fn) > 0
    return (_f1(tp, fp, fn) * present).sum(-1) / present.sum(-1).clamp_min(1)


def label_f1(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Each label's F1 [..., K] of indicator decisions ``pred`` [..., M, K] against
    ``truth`` [M, K] (0 for a label neither true nor predicted)."""
    return _f1(*_label_counts(pred, truth))


def micro_f1(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Micro-F1 of indicator decisions ``pred`` [..., M, K] against ``truth`` [M, K]: F1 of
    every (row, label) decision pooled (0 when nothing is true or predicted)."""
    return _f1(*(count.sum(-1) for count in _label_counts(pred, truth, weight)))


def samples_f1(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over rows of each row's F1 between its predicted and true label sets, for
    indicator decisions ``pred`` [..., M, K] against ``truth`` [M, K]; a row with neither
    true nor predicted labels scores 1 (it predicted "none of these" rightly)."""
    return _mean(row_f1(pred, truth), weight)


def row_f1(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Each row's F1 [..., M] of indicator decisions ``pred`` [..., M, K] against ``truth``
    [M, K] (1 for a row with neither true nor predicted labels)."""
    p, t = pred.bool(), truth.bool()
    tp = (p & t).sum(-1).double()
    both = (p.sum(-1) + t.sum(-1)).double()
    return (2 * tp / both.clamp_min(1)).where(both > 0, 1.0)


def subset_accuracy(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of rows whose whole label set is right, for indicator decisions ``pred``
    [..., M, K] against ``truth`` [M, K] (sklearn's ``accuracy_score`` of indicators)."""
    return _mean((pred.bool() == truth.bool()).all(-1).double(), weight)


def _mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last axis (rows), each row weighing ``weight`` [M] when given."""
    if weight is None:
        return values.mean(-1)
    return (values * weight).sum(-1) / weight.sum()


def _label_counts(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per label [..., K] of indicator
    decisions [..., M, K] against ``truth`` [M, K], as float64 (counted exactly as ints;
    summing ``weight`` [M], a row's weight, when given)."""
    p, t = pred.bool(), truth.bool()
    if weight is None:
        tp = (p & t).sum(-2)
        return tp.double(), (p.sum(-2) - tp).double(), (t.sum(-2) - tp).double()
    w = weight.double()[:, None]
    tp = ((p & t) * w).sum(-2)
    return tp, (p * w).sum(-2) - tp, (t * w).sum(-2) - tp


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """F1 from counts; 0 where there is nothing true or predicted."""
    both = 2 * tp + fp + fn
    return 2 * tp / both.where(both > 0, 1.0)


def batched(
    pred: torch.Tensor, truth: torch.Tensor, metric: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``metric`` of each leading row of ``pred`` ([L, M] class indices, or [L, M, K]
    indicators when ``truth`` is [M, K]) → [L] float64; rows weighing ``weight`` [M]
    (scikit-learn's ``sample_weight``) when given."""
    if truth.ndim == 1:
        if metric == "accuracy":
            return accuracy(pred, truth, weight)
        n_classes = int(max(pred.max(), truth.max())) + 1
        return macro_f1(pred, truth, n_classes, weight=weight)
    return _MULTI_LABEL[metric](pred, truth, weight=weight)


def score(
    pred: torch.Tensor, truth: torch.Tensor, metric: str, weight: torch.Tensor | None = None
) -> float:
    """One prediction's ``metric``: class indices [M] (``accuracy`` or ``macro_f1``) or
    indicator decisions [M, K] (any of ``MULTI_LABEL_METRICS``), rows weighing ``weight``."""
    return float(batched(pred[None], truth, metric, weight)[0])


_MULTI_LABEL = {
    "micro_f1": micro_f1,
    "macro_f1": macro_f1,
    "samples_f1": samples_f1,
    "subset_accuracy": subset_accuracy,
}
