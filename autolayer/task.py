"""What a target is: how labels become a target, the loss a head trains on, how outputs
become probabilities and decisions, and how decisions are scored.

A task is a small class registered by name (as sources, operators and heads are); every
head, the search and the saved classifier ask it instead of assuming one integer class per
text. Single-label classification (one class per text, softmax, cross-entropy, argmax) is
the first task; multi-label classification (a set of labels per text: an indicator target,
one sigmoid per label, decisions by thresholds) the second. A config names its task and
its parameters (the thresholds tuned on validation rows), so a saved model decides as it
was trained to.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from autolayer.errors import ConfigError
from autolayer.metrics import METRICS, MULTI_LABEL_METRICS
from autolayer.registry import Registry

if TYPE_CHECKING:  # torch loads with the first computation, not with the names (CLI help)
    from torch import Tensor

DEFAULT = "single_label"
# thresholds a multi-label decision rule chooses from: 0.05, 0.10, ..., 0.95
THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)
MIN_POSITIVES = 5  # a label's own threshold needs this many positive validation rows
EMPTY_POLICIES = ("top", "none")


class Task:
    """One kind of target. Subclasses set ``name`` (by :func:`register_task`) and may
    override any step; the base is single-label classification."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = METRICS
    default_metric: ClassVar[str] = "accuracy"

    def __init__(self, **params: object) -> None:
        """A task's parameters (its decision rule); single-label has none."""
        if params:
            raise ConfigError(
                f"task {self.name!r} takes no parameters; got {', '.join(sorted(params))}"
            )

    @classmethod
    def from_params(cls, params: dict, labels: Sequence[str] | None = None) -> Task:
        """The task ``params`` (what :meth:`params` recorded) describe; ``labels``, the
        names it decides, lets an error name the label of a bad per-label value."""
        return cls(**params)

    def params(self) -> dict:
        """What rebuilds this task with :func:`make_task` (JSON; a config records it)."""
        return {}

    def tuned(self, proba: np.ndarray, target: np.ndarray, metric: str) -> Task:
        """This task with its decision rule fitted on validation ``proba`` against
        ``target`` for ``metric`` (single-label's argmax has nothing to fit: itself)."""
        return self

    def untuned(self) -> Task:
        """This task without a fitted decision rule: what judges choices made inside a fit
        (a penalty, a calibration, early stopping), so a head refit with the rule a trial
        tuned chooses as the trial did (single-label has no rule: itself)."""
        return self

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


def make_task(
    name: str | None = None, params: dict | None = None, labels: Sequence[str] | None = None
) -> Task:
    """The task registered as ``name`` (None: single-label classification) with ``params``
    (what :meth:`Task.params` recorded; None: the defaults). ``labels``: the label names it
    decides, named in the error about a bad per-label parameter."""
    task = TASKS.find(DEFAULT if name is None else name, params=("task",))
    return task.from_params(params or {}, labels)


@register_task(DEFAULT)
class SingleLabel(Task):
    """One class per text: softmax over classes, cross-entropy, the most probable class."""


@register_task("multi_label")
class MultiLabel(Task):
    """A set of labels per text: a 0/1 indicator target ``[N, K]``, one sigmoid per label,
    binary cross-entropy, and a label decided when its probability reaches a threshold.

    ``threshold`` None (not fitted) scores at the best global threshold of ``THRESHOLDS``
    on the rows scored — every trial and probe is judged the same way, before any rule is
    fitted — and decides at 0.5; :meth:`tuned` fits one per label. ``empty`` says what a
    row with no label above its threshold gets: ``"top"`` its most probable label (most
    texts have one), ``"none"`` no label.
    """

    metrics = MULTI_LABEL_METRICS
    default_metric = "micro_f1"

    def __init__(
        self,
        threshold: float | Sequence[float] | None = None,
        empty: str = "top",
        **unknown: object,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"task_params: unknown key {sorted(unknown)[0]!r}; {self.name} takes "
                "threshold, empty"
            )
        if empty not in EMPTY_POLICIES:
            raise ConfigError(
                f"task_params: empty must be one of {', '.join(EMPTY_POLICIES)}; got "
                f"{_shown(empty)}"
            )
        self.threshold = _checked_threshold(threshold)
        self.empty = empty

    @classmethod
    def from_params(cls, params: dict, labels: Sequence[str] | None = None) -> MultiLabel:
        """The rule ``params`` record, a bad threshold named by its label in ``labels``."""
        _checked_threshold(params.get("threshold"), labels)
        return cls(**params)

    def params(self) -> dict:
        return {"threshold": self.threshold, "empty": self.empty}

    def untuned(self) -> MultiLabel:
        """Its thresholds dropped (scores at the best global threshold), its empty policy
        kept."""
        return MultiLabel(empty=self.empty)

    def target(self, y: object, n_rows: int, where: str = "y") -> np.ndarray:
        """``y`` checked as the target of ``n_rows`` rows: a 0/1 indicator ``[N, K]``,
        as float32 (what the loss reads)."""
        y = np.asarray(y)
        ok = y.ndim == 2 and len(y) == n_rows and y.shape[1] > 0 and y.dtype != object
        if not ok or not np.isin(y, (0, 1)).all():
            raise ConfigError(
                f"{where} must be a 0/1 indicator of shape ({n_rows}, K), "
                f"got dtype {y.dtype} shape {y.shape}"
            )
        return y.astype(np.float32)

    def n_outputs(self, *targets: np.ndarray) -> int:
        """Outputs a head needs: one per label, the targets' columns (all alike)."""
        widths = {np.shape(t)[1] for t in targets}
        if len(widths) != 1:
            raise ConfigError(f"the targets differ in their number of labels: {sorted(widths)}")
        return widths.pop()

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Binary cross-entropy of ``logits [B, K]``, summed over labels, mean over rows."""
        from torch.nn import functional as F

        bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="sum")
        return bce / len(logits)

    def proba(self, logits: Tensor) -> Tensor:
        """Each label's probability ``[N, K]``: its own sigmoid."""
        return logits.sigmoid()

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Decisions ``[N, K]`` (uint8) at the fitted thresholds (0.5 when not fitted)."""
        proba = np.asarray(proba)
        threshold = 0.5 if self.threshold is None else self._thresholds(proba.shape[-1])
        return _decided(proba, threshold, self.empty).astype(np.uint8)

    def score(self, proba: np.ndarray, target: np.ndarray, metric: str) -> float:
        """``metric`` of the decisions on ``proba`` against ``target``: at the fitted
        thresholds, or (not fitted) at the best global threshold for these rows."""
        return float(self.scores(np.asarray(proba)[None], target, (metric,))[0, 0])

    def scores(self, proba: np.ndarray, target: np.ndarray, metrics: Sequence[str]) -> np.ndarray:
        """:meth:`score` by each of ``metrics`` of each leading slice of ``proba``
        ``[L, N, K]`` (a probe's layers; when not fitted, each metric and slice at its own
        best threshold) → ``[len(metrics), L]``."""
        import torch

        from autolayer.metrics import batched

        proba, truth = np.asarray(proba), torch.as_tensor(np.asarray(target))
        if self.threshold is None:
            return self._grid(proba, truth, metrics).max(1)
        decided = torch.as_tensor(_decided(proba, self._thresholds(proba.shape[-1]), self.empty))
        return np.stack([batched(decided, truth, m).numpy() for m in metrics])

    def tuned(self, proba: np.ndarray, target: np.ndarray, metric: str) -> MultiLabel:
        """A rule fitted on validation rows for ``metric``: the best global threshold, then,
        label by label (most positives first), the threshold that maximises that label's F1
        if ``metric`` on these rows rises with it (a tie keeps the global one: a per-label
        threshold that changes nothing on validation is a guess on test). A label's best F1
        is not the metric's best (subset accuracy wants every label of a row right at once):
        adopting them all lost to the global threshold on most random validation sets. Labels with
        fewer than ``MIN_POSITIVES`` positives among ``target`` keep the global one."""
        import torch

        from autolayer.metrics import label_f1

        proba, target = np.asarray(proba), np.asarray(target)
        thresholds = np.full(proba.shape[-1], self.best_threshold(proba, target, metric))
        decided = torch.as_tensor(proba >= THRESHOLDS[:, None, None])  # [T, N, K]
        per_label = label_f1(decided, torch.as_tensor(target)).numpy().T  # [K, T]
        own = THRESHOLDS[_middle_of_best(per_label)]
        positives = (target > 0).sum(0)
        best = MultiLabel(thresholds.tolist(), self.empty).score(proba, target, metric)
        for k in np.argsort(-positives, kind="stable"):
            if positives[k] < MIN_POSITIVES or own[k] == thresholds[k]:
                continue
            trial = thresholds.copy()
            trial[k] = own[k]
            value = MultiLabel(trial.tolist(), self.empty).score(proba, target, metric)
            if value > best:
                thresholds, best = trial, value
        return MultiLabel(thresholds.tolist(), self.empty)

    def best_threshold(self, proba: np.ndarray, target: np.ndarray, metric: str) -> float:
        """The global threshold of ``THRESHOLDS`` with the best ``metric`` of ``proba``
        ``[N, K]`` against ``target`` (ties: the middle of the tied ones)."""
        import torch

        truth = torch.as_tensor(np.asarray(target))
        grid = self._grid(np.asarray(proba)[None], truth, (metric,))  # [1, T, 1]
        return float(THRESHOLDS[_middle_of_best(grid[0, :, 0][None])[0]])

    def strata(self, target: np.ndarray) -> np.ndarray:
        """Each row's least frequent label (K for a row with none): stratifying on it keeps
        rare labels on every side of a split."""
        from autolayer.sampling import rarest_label

        return rarest_label(np.asarray(target))

    def _thresholds(self, n_labels: int) -> np.ndarray:
        """The fitted thresholds, one per label of ``n_labels`` (a list must have as many)."""
        threshold = np.asarray(self.threshold)
        if threshold.ndim and len(threshold) != n_labels:
            raise ConfigError(f"{len(threshold)} thresholds for {n_labels} labels")
        return threshold

    def _grid(self, proba: np.ndarray, truth: Tensor, metrics: Sequence[str]) -> np.ndarray:
        """Each of ``metrics`` at each threshold of ``THRESHOLDS`` for each slice of
        ``proba`` ``[L, N, K]`` → ``[len(metrics), T, L]`` (each decision made once)."""
        import torch

        from autolayer.metrics import batched

        grid = []
        for t in THRESHOLDS:
            decided = torch.as_tensor(_decided(proba, t, self.empty))
            grid.append([batched(decided, truth, m).numpy() for m in metrics])
        return np.asarray(grid).transpose(1, 0, 2)


def _decided(proba: np.ndarray, threshold: float | np.ndarray, empty: str) -> np.ndarray:
    """Boolean decisions ``[..., N, K]``: each probability at or above its label's
    ``threshold``; with ``empty`` "top", a row with none gets its most probable label."""
    decided = proba >= threshold
    if empty == "top":
        none = ~decided.any(-1, keepdims=True)
        top = proba.argmax(-1)[..., None] == np.arange(proba.shape[-1])
        decided |= none & top
    return decided


def _checked_threshold(
    threshold: object, labels: Sequence[str] | None = None
) -> float | list[float] | None:
    """A threshold in (0, 1), a non-empty list of them (one per label), or None. A bad one
    in a list is named by its index (and its label, from ``labels`` when they match): a
    list of 90 thresholds is no message."""
    if threshold is None:
        return None
    if _is_probability(threshold):
        return float(threshold)
    if not isinstance(threshold, list | tuple) or not threshold:
        raise ConfigError(
            f"task_params: threshold = {_shown(threshold)}; it must be a number in (0, 1) or "
            "a non-empty list of them (one per label)"
        )
    bad = next((i for i, value in enumerate(threshold) if not _is_probability(value)), None)
    if bad is not None:
        label = f" (label {labels[bad]!r})" if labels is not None and bad < len(labels) else ""
        raise ConfigError(
            f"task_params: threshold[{bad}] = {_shown(threshold[bad])}{label}; each must be a "
            "number in (0, 1)"
        )
    return [float(value) for value in threshold]


def _shown(value: object, width: int = 40) -> str:
    """``value``'s repr, cut to ``width`` characters: an error names it on one short line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_probability(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and 0 < value < 1


def _middle_of_best(scores: np.ndarray) -> np.ndarray:
    """Per row of ``scores`` ``[R, T]`` (one per threshold of ``THRESHOLDS``), the index of
    the middle of the thresholds tied at the best score: on a separable validation set every
    threshold from 0.05 up ties, and the lowest would buy recall with test precision. The
    middle one of the tied (the lower of two middles), so never a threshold that is not
    tied at the best when the tied ones are not contiguous."""
    best = scores >= scores.max(1, keepdims=True) - 1e-12
    middle = [np.flatnonzero(row) for row in best]
    return np.array([tied[(len(tied) - 1) // 2] for tied in middle], dtype=np.int64)
