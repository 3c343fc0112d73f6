"""The late-fusion head: one linear classifier per model (a member), stacked by a
multinomial logistic regression on the members' log-probabilities (issue 29).

Early fusion (the MLP's operators) trains one classifier on fused features; on topic sets a
second model gains it little. Late fusion keeps each member's own calibrated classifier and
learns how far to trust each, per class: the meta-learner reads out-of-fold probabilities
of the training rows (each row scored by members that never saw its label), because
in-sample probabilities of a member that fits its rows well would teach it to trust that
member blindly. At predict time each member runs once.

A multi-label task stacks the same way, label by label: the members' linear heads are
multi-label, their out-of-fold folds stratified by each row's rarest label (the task's
strata), and the meta-learner is K binary logistic regressions on the members' log-odds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from autolayer.heads.base import Fitting, Head, HeadFit, Untuned, register_head
from autolayer.heads.linear import LinearHead, pin_constant_labels

# folds of the out-of-fold probabilities (fewer for a rare class, >= 2). Three, not five:
# each fold refits every member with its own CV, so the head costs (folds + 1) members'
# fits; on R8 (TF-IDF + a 384-d block, one core) 3 folds take 12-14 s against 5 folds'
# 29 s, at the same test accuracy (97.44 against 97.26 %)
OOF_FOLDS = 3
LOG_FLOOR = 1e-7  # probabilities are clipped here (and below 1 - it) before the log
# meta bias of a class above every training label: far below any meta logit (the features
# are >= log 1e-7 each), so it never wins
ABSENT_BIAS = -1e4


def stacking_folds(strata: np.ndarray, seed: int, *, shrink: bool = True) -> list[np.ndarray]:
    """Held-out rows of each out-of-fold fold, stratified by ``strata`` and shuffled by
    ``seed``: ``OOF_FOLDS`` folds, or as many as the rarest stratum has rows, at least 2.
    A one-row class is held out once, by members that never saw it (its column then
    comes from the absent class's bias): refusing it would end a whole search over a
    class a few-label user may well have.

    ``shrink`` False (multi-label strata: each row's rarest label) keeps ``OOF_FOLDS``
    folds, the rare strata pooled: the probe's rule (:func:`autolayer.probe.folds`), which
    the linear members' own CV follows too; a label of two rows would otherwise leave two
    folds, each member fitted on half the rows."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    from autolayer.probe import folds

    strata = np.asarray(strata)
    if not shrink:
        return folds(strata, OOF_FOLDS, seed, shrink=False)
    rarest = int(np.unique(strata, return_counts=True)[1].min())
    splitter = StratifiedKFold(min(OOF_FOLDS, max(rarest, 2)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has 1"
        return [held for _, held in splitter.split(np.zeros(len(strata)), strata)]


@register_head("late")
class LateFusionHead(Untuned, Head):
    """A :class:`LinearHead` per input, stacked by multinomial logistic regression on the
    concatenated log-probabilities; no parameters, so one configuration.

    The meta-learner is :func:`autolayer.logistic.fit_logistic` at alpha 1 (sklearn's
    ``LogisticRegression(C=1.0)`` objective) rather than sklearn itself: it is the solver the
    members use, it returns softmax weights ``[C, M·C+1]`` for two classes too (sklearn
    gives one binary vector to unfold), and it needs no sklearn-version-dependent
    ``multi_class`` argument. ``fused_dim`` is the base's ΣD_i (what the members read):
    the meta-learner's M·C needs the number of classes, which ``fused_dim`` is not given.
    """

    @classmethod
    def takes(cls, chosen: Sequence[Any]) -> bool:
        """Two models or more (one is the linear head), each one a linear head reads."""
        return len(chosen) >= 2 and all(LinearHead.takes([c]) for c in chosen)

    @classmethod
    def n_parameters(
        cls, input_dims: Sequence[int], n_outputs: int, params: Mapping[str, Any]
    ) -> int:
        members = sum(LinearHead.n_parameters([d], n_outputs, {}) for d in input_dims)
        return members + (len(input_dims) * n_outputs + 1) * n_outputs

    @classmethod
    def describe(cls, params: Mapping[str, Any], n_models: int) -> str:
        return "late fusion (a linear classifier per model, stacked by logistic regression)"

    # ------------------------------------------------------------------ fitting

    def out_of_fold(
        self,
        train: Sequence[Any],
        target: np.ndarray,
        *,
        seed: int,
        folds: Sequence[np.ndarray] | None = None,
        n_outputs: int | None = None,
        device: Any = None,
    ) -> list[np.ndarray]:
        """Each member's out-of-fold probabilities ``[N, C]`` of the training rows: row r's
        come from a fresh linear head fit on the other folds' rows, so its own label never
        reaches them. ``folds`` (held-out rows) default to :func:`stacking_folds` of the
        task's strata (a multi-label target's pooled, not shrunk); a class missing from a
        fold's training rows still gets its column."""
        target = np.asarray(target)
        n_outputs = n_outputs or self.task.n_outputs(target)
        if folds is None:
            folds = stacking_folds(self.task.strata(target), seed, shrink=target.ndim == 1)
        every = np.arange(len(target))
        out = [np.zeros((len(target), n_outputs), dtype=np.float32) for _ in train]
        for held in folds:
            keep = np.setdiff1d(every, held)
            for x, proba in zip(train, out, strict=True):
                member = self._member()
                member.fit([x[keep]], target[keep], seed=seed, device=device, n_outputs=n_outputs)
                proba[held] = member.predict_proba([x[held]])
        return out

    def _fit(self, fitting: Fitting) -> HeadFit:
        """Out-of-fold probabilities → meta-learner → members refit on every row. The one
        entry of the history is the validation metric; without ``val``, the stacked
        out-of-fold predictions' metric (no extra pass, and less flattering than in-sample)."""
        f = fitting
        oof = self.out_of_fold(
            f.train, f.target, seed=f.seed, n_outputs=self.n_outputs_, device=f.device
        )
        self.meta_weight_, self.meta_bias_ = self._fit_meta(self._features(oof), f.target)
        self.members_ = []
        for x in f.train:
            member = self._member()
            member.fit([x], f.target, seed=f.seed, device=f.device, n_outputs=self.n_outputs_)
            self.members_.append(member)
        judge = self.task.untuned()  # as the trial was judged, before its rule was tuned
        if f.val is None:
            proba = self._stacked(self._features(oof))
            score = judge.score(proba, f.target, self.metric)
        else:
            score = judge.score(self._proba(f.val), f.val_target, self.metric)
        n_params = self.n_parameters(self.input_dims_, self.n_outputs_, self.params)
        return HeadFit(0, score, (score,), 0.0, n_params)

    def _fit_meta(self, features: np.ndarray, target: np.ndarray) -> tuple[Tensor, Tensor]:
        """Multinomial logistic regression (alpha 1) on ``features`` ``[N, M·C]``: weights
        ``[C, M·C]`` and bias ``[C]`` (float32); a class above every label gets
        ``ABSENT_BIAS``, since the solver only sees classes up to the largest. A
        multi-label target (``[N, K]``) gets one binary regression per label, a label no
        row has (every row has) a constant bias (:func:`pin_constant_labels`)."""
        from autolayer.logistic import fit_logistic

        target = np.asarray(target)
        x = torch.from_numpy(features).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        y = torch.as_tensor(target, dtype=x.dtype if target.ndim == 2 else torch.long)
        solved = fit_logistic(x[None], y, 1.0, tol=1e-6)[0]  # [K', M·C+1]
        weight = torch.zeros(self.n_outputs_, features.shape[1])
        bias = torch.full((self.n_outputs_,), ABSENT_BIAS)
        weight[: len(solved)] = solved[:, :-1].float()
        bias[: len(solved)] = solved[:, -1].float()
        if target.ndim == 2:
            pin_constant_labels(weight, bias, target)
        return weight, bias

    def _member(self) -> LinearHead:
        """A fresh member, on the untuned task: its C and calibration are chosen as the
        trial's were, whatever rule this head decides by."""
        return LinearHead({}, task=self.task.untuned(), metric=self.metric)

    # ------------------------------------------------------------------ predicting, saving

    def _proba(self, inputs: Sequence[Any]) -> np.ndarray:
        probas = [m.predict_proba([x]) for m, x in zip(self.members_, inputs, strict=True)]
        return self._stacked(self._features(probas))

    def _features(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        """What the meta-learner reads: the members' log-odds of each label for a
        multi-label task (a label's probability says nothing of the others'), else their
        log-probabilities (:func:`_log_features`)."""
        from autolayer.task import MultiLabel

        if isinstance(self.task, MultiLabel):
            return _log_odds(probas)
        return _log_features(probas)

    def _stacked(self, features: np.ndarray) -> np.ndarray:
        """The task's probabilities from the meta-learner's logits on ``features``."""
        logits = torch.from_numpy(features) @ self.meta_weight_.T + self.meta_bias_
        return self.task.proba(logits).numpy()

    def _state(self) -> dict[str, Tensor]:
        state = {"meta.weight": self.meta_weight_, "meta.bias": self.meta_bias_}
        for i, member in enumerate(self.members_):
            state.update({f"member{i}.{k}": v for k, v in member._state().items()})
        return state

    def _restore(self, state: dict[str, Tensor]) -> None:
        """Members from their ``member{i}.`` tensors, then the meta-learner's two, their
        shapes checked; a tensor left over is a file of another head (ValueError)."""
        state = dict(state)
        members = []
        for i, (dim, sparse) in enumerate(zip(self.input_dims_, self.sparse_, strict=True)):
            prefix = f"member{i}."
            mine = {k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)}
            member = self._member()
            member.input_dims_, member.sparse_, member.n_outputs_ = [dim], [sparse], self.n_outputs_
            member._restore(mine)
            members.append(member)
        width = len(self.input_dims_) * self.n_outputs_
        weight, bias = state.pop("meta.weight"), state.pop("meta.bias")
        if weight.shape != (self.n_outputs_, width) or bias.shape != (self.n_outputs_,):
            raise ValueError(
                f"meta.weight and meta.bias must be [{self.n_outputs_}, {width}] and "
                f"[{self.n_outputs_}]; got {list(weight.shape)} and {list(bias.shape)}"
            )
        if state:
            raise ValueError(f"unexpected tensors {sorted(state)}")
        self.members_, self.meta_weight_, self.meta_bias_ = members, weight.float(), bias.float()


def _log_features(probas: Sequence[np.ndarray]) -> np.ndarray:
    """What the meta-learner reads: ``concat_i log(clip(p_i, 1e-7))`` ``[N, M·C]``."""
    return np.concatenate([np.log(np.clip(p, LOG_FLOOR, 1.0)) for p in probas], axis=1)


def _log_odds(probas: Sequence[np.ndarray]) -> np.ndarray:
    """``concat_i logit(clip(p_i, 1e-7, 1 - 1e-7))`` ``[N, M·K]``, in float64 (1 - 1e-7
    rounds to 1 in float32): bounded by ±16, so a member's certain 0 or 1 (a label it never
    saw) is a large finite feature."""
    clipped = [np.clip(np.asarray(p, dtype=np.float64), LOG_FLOOR, 1 - LOG_FLOOR) for p in probas]
    odds = np.concatenate([np.log(p) - np.log1p(-p) for p in clipped], axis=1)
    return odds.astype(np.float32)  # what _log_features gives, and the meta's weights take
