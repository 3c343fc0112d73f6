"""The validation metrics: one definition used by the probes, the search and the head.

Both are computed on integer predictions with torch, batched over rows of predictions (one
row per layer, for the probes), and agree with scikit-learn's ``accuracy_score`` and
``f1_score(average="macro")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first computation, not with the names (CLI help)
    import torch

METRICS = ("accuracy", "macro_f1")


def accuracy(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Accuracy per row of ``pred`` [L, M] (or [M]) against ``truth`` [M]."""
    return (pred == truth).double().mean(-1)


def macro_f1(pred: torch.Tensor, truth: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Macro-F1 per row of ``pred`` [L, M] against ``truth`` [M] → [L].

    Averages over the classes present in truth or predictions, as sklearn's ``f1_score``
    does; a class never predicted scores 0.
    """
    from torch.nn.functional import one_hot

    pred_hot = one_hot(pred, n_classes).double()  # [L, M, K]
    true_hot = one_hot(truth, n_classes).double()  # [M, K]
    tp = (pred_hot * true_hot).sum(1)
    fp = pred_hot.sum(1) - tp
    fn = true_hot.sum(0) - tp
    present = (tp + fp + fn) > 0
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return (f1 * present).sum(1) / present.sum(1)


def score(pred: torch.Tensor, truth: torch.Tensor, metric: str) -> float:
    """One prediction vector's ``metric`` (``accuracy`` or ``macro_f1``)."""
    if metric == "accuracy":
        return float(accuracy(pred, truth))
    n_classes = int(max(pred.max(), truth.max())) + 1
    return float(macro_f1(pred[None], truth, n_classes)[0])
