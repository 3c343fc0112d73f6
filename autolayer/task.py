"""What a target is: how labels become a target, the loss a head trains on, how outputs
become probabilities and decisions, and how decisions are scored.

A task is a small class registered by name (as sources, operators and heads are); every
head, the search and the saved classifier ask it instead of assuming one integer class per
text. Single-label classification (one class per text, softmax, cross-entropy, argmax) is
the first task; a config names its task, so a saved model decides as it was trained to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from autolayer.errors import ConfigError
from autolayer.metrics import METRICS
from autolayer.registry import Registry

if TYPE_CHECKING:  # torch loads with the first computation, not with the names (CLI help)
    from torch import Tensor

DEFAULT = "single_label"


class Task:
    """One kind of target. Subclasses set ``name`` (by :func:`register_task`) and may
    override any step; the base is single-label classification."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = METRICS

    def target(self, y: object, n_rows: int, where: str = "y") -> np.ndarray:
        """``y`` checked as the target of ``n_rows`` rows: class indices ``[N]`` (int64)."""
        y = np.asarray(y)
        if y.shape != (n_rows,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise ConfigError(
                f"{where} must be non-negative int labels of shape ({n_rows},), "
                f"got dtype {y.dtype} shape {y.shape}"
            )
        return y.astype(np.int64)

    def n_outputs(self, *targets: np.ndarray) -> int:
        """Outputs a head needs for these targets (classes: the largest index + 1, >= 2)."""
        counted = [int(t.max()) + 1 for t in targets if len(t)]
        if not counted:
            raise ConfigError("cannot count the classes: every target given is empty")
        return max(2, *counted)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The training loss of ``logits [B, C]`` against ``target`` (mean over rows)."""
        from torch.nn import functional as F

        return F.cross_entropy(logits, target)

    def proba(self, logits: Tensor) -> Tensor:
        """Probabilities ``[N, C]`` from logits."""
        return logits.softmax(dim=-1)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Decisions from probabilities ``[N, C]``: one class index per row ``[N]``."""
        return np.asarray(proba).argmax(axis=1)

    def score(self, proba: np.ndarray, target: np.ndarray, metric: str) -> float:
        """``metric`` of the decisions on ``proba`` against ``target``."""
        import torch

        from autolayer.metrics import score

        decided = torch.as_tensor(self.decide(proba))
        return score(decided, torch.as_tensor(np.asarray(target)), metric)

    def strata(self, target: np.ndarray) -> np.ndarray:
        """One stratum per row, for stratified samples and folds (its class)."""
        return np.asarray(target)


TASKS = Registry("task")
register_task = TASKS.register  # class decorator: @register_task("name")


def make_task(name: str | None = None) -> Task:
    """The task registered as ``name`` (None: single-label classification)."""
    return TASKS.find(DEFAULT if name is None else name, params=("task",))()


@register_task(DEFAULT)
class SingleLabel(Task):
    """One class per text: softmax over classes, cross-entropy, the most probable class."""
