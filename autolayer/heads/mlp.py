"""The MLP head, after Gwak & Jung (2025), "Layer-Aware Embedding Fusion for LLMs in Text
Classifications" (arXiv 2504.05764): each model's chosen-layer embedding ``[N, D_i]`` is
standardised, projected to a common width ``d`` by Linear+ReLU, the ``m`` projections are
fused by one operator (:mod:`autolayer.fusion`), and an MLP gives the task's logits.

Trained by AdamW on shuffled mini-batches (and Adam on the touched rows of a sparse
source's table), with early stopping on the validation metric; the final head, which has no
validation split, holds out ``validation_fraction`` of its own rows to stop on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from autolayer.errors import ConfigError, DivergedError
from autolayer.fusion import OPERATORS, _check_shape, fused_dim, make_operator
from autolayer.heads.base import Fitting, HeadFit, OnEpoch, register_head
from autolayer.heads.modules import (
    NetHead,
    SparseRows,
    _Projection,
    _RowAdam,
    _SparseProjection,
    n_learned,
    seeded,
    to_tensor,
)
from autolayer.options import Interval
from autolayer.sampling import stratified_rows

if TYPE_CHECKING:
    import optuna

# The defaults follow the paper where it gives them (lr, batch_size, epochs, width);
# hidden, dropout and patience are ours.
DEFAULTS: dict[str, Any] = {
    "operator": "concat",
    "width": 1024,
    "hidden": 256,
    "dropout": 0.1,
    "lr": 1e-4,
    "batch_size": 100,
    "epochs": 120,  # the most; with validation, early stopping picks fewer
    "patience": 10,  # epochs without a strictly better validation metric
    "weight_decay": 0.0,
}
# Fields checked when given but not added by check_params, and what their absence means: a
# config written before one existed reads back as it was written, and trains as it did.
OPTIONAL: dict[str, Any] = {
    "validation_fraction": 0.0,  # the final fit's held-out share; 0: exactly `epochs` epochs
}
FINAL_HOLD_OUT = 0.1  # scikit-learn's MLPClassifier(early_stopping=True) default
# a trial validated on fewer rows carries its epoch count over: its final head's held-out
# tenth of train + validation would be under about a hundred rows, too few to stop on
MIN_VAL_ROWS = 200
GUIDE_LR = 1e-3  # the learning rate of guided first trials (see MLPHead.guided)
PRIOR_FLOOR = 1e-3  # multi-label: a label's prior is clipped to [it, 1 - it] (_prior_bias)
BOUNDS = {
    "width": Interval(int, 1, 65536),
    "hidden": Interval(int, 1, 65536),
    "dropout": Interval(float, 0, 1, closed="left"),
    "lr": Interval(float, 0, 1, closed="right"),
    "batch_size": Interval(int, 1, 1048576),
    "epochs": Interval(int, 1, 1000),
    "patience": Interval(int, 1, 1000),
    "weight_decay": Interval(float, 0, 1e3),
    "validation_fraction": Interval(float, 0, 0.5, closed="left"),
}


class MLPNet(nn.Module):
    """Per-model standardise -> Linear(D_i, d)+ReLU -> operator -> MLP -> logits ``[B, C]``.

    The MLP is ``Linear(out_dim, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, C)``; a
    sparse input (TF-IDF) gets a :class:`~autolayer.heads.modules._SparseProjection`. The
    tensor names (``projections.*``, ``fusion.*``, ``head.*``) are what saved heads hold.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        sparse: Sequence[bool],
        params: Mapping[str, Any],
        n_outputs: int,
    ) -> None:
        super().__init__()
        width = params["width"]
        self.projections = nn.ModuleList(
            (_SparseProjection if is_sparse else _Projection)(dim, width)
            for dim, is_sparse in zip(input_dims, sparse, strict=True)
        )
        self.fusion = make_operator(params["operator"], len(input_dims), width)
        self.head = nn.Sequential(
            nn.Linear(self.fusion.out_dim(len(input_dims), width), params["hidden"]),
            nn.ReLU(),
            nn.Dropout(params["dropout"]),
            nn.Linear(params["hidden"], n_outputs),
        )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Logits ``[B, C]`` from one ``[B, D_i]`` tensor per model, in input order."""
        hs = [projection(x) for projection, x in zip(self.projections, inputs, strict=True)]
        return self.head(self.fusion(hs))


@register_head("mlp")
class MLPHead(NetHead):
    """Projections + fusion operator + MLP, trained by gradient with early stopping."""

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str = "head") -> dict[str, Any]:
        known = DEFAULTS.keys() | OPTIONAL.keys()
        unknown = sorted(str(k) for k in params if k not in known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        checked = {**DEFAULTS, **params}
        for key, interval in BOUNDS.items():
            if key not in checked:  # an optional field not given
                continue
            value = checked[key]
            if not interval.holds(value):
                raise ConfigError(f"{where}: {interval.refusal(key, value)}")
            checked[key] = interval.kind(value)
        if not isinstance(checked["operator"], str) or checked["operator"] not in OPERATORS:
            raise ConfigError(
                f"{where}: field 'operator' must be one of {', '.join(sorted(OPERATORS))}; "
                f"got {checked['operator']!r}"
            )
        try:
            _check_shape(checked["operator"], 1, checked["width"])
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        return checked

    @classmethod
    def suggest(cls, trial: optuna.Trial, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        """The operator (among several models only), width and learning rate are choices;
        the rest comes from the space."""
        operator = "concat"
        if len(chosen) > 1:
            operator = trial.suggest_categorical("operator", space.operator_names())
        width = int(trial.suggest_categorical("width", space.widths))
        lr = trial.suggest_float("lr", *space.lr, log=True)
        return cls.check_params(
            {
                "operator": operator,
                "width": width,
                "hidden": space.hidden,
                "dropout": space.dropout,
                "lr": lr,
                "batch_size": 100,
                "epochs": space.max_epochs,
                "patience": space.patience,
            }
        )

    @classmethod
    def n_parameters(
        cls, input_dims: Sequence[int], n_outputs: int, params: Mapping[str, Any]
    ) -> int:
        params = {**DEFAULTS, **params}
        width, hidden, m = params["width"], params["hidden"], len(input_dims)
        operator = _check_shape(params["operator"], m, width)
        projections = sum(dim * width + width for dim in input_dims)
        mlp = operator.out_dim(m, width) * hidden + hidden + hidden * n_outputs + n_outputs
        return projections + operator.n_parameters(m, width) + mlp

    @classmethod
    def fused_dim(cls, input_dims: Sequence[int], params: Mapping[str, Any]) -> int:
        params = {**DEFAULTS, **params}
        return fused_dim(len(input_dims), params["width"], params["operator"])

    @classmethod
    def final_params(cls, params: Mapping[str, Any], fit: Mapping[str, Any]) -> dict[str, Any]:
        """How the final head, trained on every row, knows when to stop.

        It trains on more rows than any trial (train + validation) and, once trials rank
        on samples of rows, the search's protocol and the final fit are two things: so it
        stops by itself, on ``FINAL_HOLD_OUT`` of its own rows (up to the trial's
        ``epochs``, with its patience). Where that share would be too few rows to judge an
        epoch by (a trial validated on fewer than ``MIN_VAL_ROWS``, or cross-validated: few
        labels, ``fold_scores`` in ``fit``), it trains the epochs the trial's early
        stopping chose (its patience unused), as before."""
        if "fold_scores" in fit or fit.get("val_rows", 0) < MIN_VAL_ROWS:
            return {**params, "epochs": int(fit["best_epoch"]) + 1}
        return {**params, "validation_fraction": FINAL_HOLD_OUT}

    @classmethod
    def guided(cls, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        """The smallest width, a moderate learning rate (clipped to the space's range) and,
        among several models, concatenation when searched (else the first operator)."""
        operators = space.operator_names()
        operator = "concat" if "concat" in operators else operators[0]
        lr = min(max(GUIDE_LR, space.lr[0]), space.lr[1])
        return {
            **({"operator": operator} if len(chosen) > 1 else {}),
            "width": min(space.widths),
            "lr": lr,
        }

    @classmethod
    def describe(cls, params: Mapping[str, Any], n_models: int) -> str:
        params = {**DEFAULTS, **params}
        width = f"width {params['width']}"
        return f"fused by {params['operator']}, {width}" if n_models > 1 else width

    def _fit(self, fitting: Fitting) -> HeadFit:
        """With ``val``, or without it and a ``validation_fraction`` (the final fit then
        holds those rows out, see :meth:`_held_out`), the best epoch's weights on them are
        restored. Without either it trains exactly ``epochs`` epochs and keeps the last
        weights, its history the training metric."""
        f = self._held_out(fitting)
        with seeded(f.seed, f.device) as device:
            x, y = self._start(f.train, f.target, device)
            if y.ndim == 2:
                _prior_bias(self.net_.head[-1], y)
            restore_best, val_target, stop_early = f.val is not None, f.val_target, f.stop_early
            if f.val is None:
                val_x, val_target, stop_early = x, f.target, False
            else:
                val_x = [to_tensor(array, device) for array in f.val]
            generator = torch.Generator().manual_seed(f.seed)
            best_epoch, history = self._epochs(
                x, y, val_x, val_target, generator, f.on_epoch, stop_early, restore_best
            )
        self.net_.cpu().eval()
        return HeadFit(best_epoch, history[best_epoch], history, 0.0, n_learned(self.net_))

    def _held_out(self, f: Fitting) -> Fitting:
        """The final fit (no ``val``) with ``validation_fraction`` of its rows moved to
        ``val``, as scikit-learn's ``MLPClassifier(early_stopping=True)`` does; ``f``
        unchanged when the fraction is 0 or there are no rows to spare."""
        fraction = self.params.get("validation_fraction", OPTIONAL["validation_fraction"])
        self.held_out_ = 0  # said by apply: these rows stop the fit, they do not train it
        if f.val is not None or fraction == 0:
            return f
        held = held_out_rows(self.task.strata(f.target), fraction, f.seed)
        if not len(held):
            return f
        self.held_out_ = len(held)
        keep = np.setdiff1d(np.arange(len(f.target)), held)
        return replace(
            f,
            train=[x[keep] for x in f.train],
            target=f.target[keep],
            val=[x[held] for x in f.train],
            val_target=f.target[held],
        )

    def _epochs(
        self,
        x: list[Tensor | SparseRows],
        y: Tensor,
        val: list[Tensor | SparseRows],
        val_target: np.ndarray,
        generator: torch.Generator,
        on_epoch: OnEpoch | None,
        stop_early: bool,
        restore_best: bool,
    ) -> tuple[int, tuple[float, ...]]:
        """The epoch loop; leaves the best (or last) state in ``net_``. Returns (best
        epoch, validation history)."""
        net, params = self.net_, self.params
        optimizers = self._optimizers()
        history: list[float] = []
        best_epoch, best_state = 0, None
        for epoch in range(params["epochs"]):
            net.train()
            order = torch.randperm(len(y), generator=generator).to(y.device)
            total = torch.zeros((), device=y.device)  # summed on device: no sync per batch
            for batch in order.split(params["batch_size"]):
                loss = self.task.loss(net([t[batch] for t in x]), y[batch])
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                total += loss.detach()
            if not torch.isfinite(total):
                raise DivergedError(
                    f"the {self.kind} head diverged (its training loss is {total.item()} in "
                    f"epoch {epoch + 1})" + self._diverged_hint()
                )
            score = self._score(val, val_target)
            history.append(score)
            if best_state is None or score > history[best_epoch]:
                best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if on_epoch is not None and on_epoch(epoch, score):
                break
            if stop_early and epoch - best_epoch >= params["patience"]:
                break
        if restore_best:
            net.load_state_dict(best_state)
        else:
            best_epoch = len(history) - 1
        return best_epoch, tuple(history)

    def _optimizers(self) -> list:
        """AdamW, and for sparse projections' tables (a TF-IDF vocabulary is tens of
        thousands of rows) Adam on the rows each batch touches."""
        lr, decay = self.params["lr"], self.params["weight_decay"]
        out = [torch.optim.AdamW(self.net_.parameters(), lr=lr, weight_decay=decay)]
        tables = [m for m in self.net_.projections if isinstance(m, _SparseProjection)]
        if tables:
            out.append(_RowAdam(tables, lr))
        return out

    def _build(self) -> MLPNet:
        return MLPNet(self.input_dims_, self.sparse_, self.params, self.n_outputs_)

    def _diverged_hint(self) -> str:
        return f"; lower lr (it is {self.params['lr']:g})"


def held_out_rows(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of about ``fraction`` of the rows (at least 1), stratified by
    ``strata`` (one per row: a class, or a multi-label row's rarest label) and seeded.

    One seeded row of each stratum is never held out, so every class (every rarest-label
    stratum) keeps a training row: a class seen only in the held-out rows could not be
    learned, only missed. The rest are drawn by :func:`~autolayer.sampling.stratified_rows`,
    one row of each stratum first when there are enough to hold out, so the stopping
    metric sees every class it can. Empty (nothing held out: the fit trains its ``epochs``
    on every row) when no stratum has two rows, e.g. a single row.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(strata))
    _, first = np.unique(strata[order], return_index=True)
    spare = np.setdiff1d(np.arange(len(strata)), order[first])
    size = min(max(1, round(fraction * len(strata))), len(spare))
    if size == len(spare):  # none, or all of them: nothing to draw
        return spare
    per_class = int(size >= len(np.unique(strata[spare])))
    return spare[stratified_rows(strata[spare], size, seed, per_class=per_class)]


@torch.no_grad()
def _prior_bias(output: nn.Linear, target: Tensor) -> None:
    """Start each label's output bias at the log-odds of its training frequency (multi-label
    target ``[N, K]``), as a fitted intercept would be: at 0 every label starts at p = 0.5,
    and with many rare labels the first epochs go to pushing K biases down at the learning
    rate's pace (1e-4 a step, against log-odds of -4 for a 2 % label): on 40 synthetic
    labels of 12 % each, 25 epochs at lr 1e-3 reached a validation micro-F1 of 0.53 from
    this start and 0.47 from 0. A label no row has starts at the floor's log-odds (about
    -6.9) and the loss pushes it further down."""
    prior = target.float().mean(0).clamp(PRIOR_FLOOR, 1 - PRIOR_FLOOR)
    output.bias.copy_(prior.log() - (-prior).log1p())
