"""The linear head: a linear classifier on the concatenated features of the chosen models.

On dense features only it is logistic regression on the standardised features, fitted to
convergence (the probe's solver). On a few labels per class it beats the MLP head on the
same features, which early stopping on a handful of rows cannot regularise
(``studies/fewshot``).

With a sparse input (a TF-IDF source's CSR ``[N, V]``), alone or beside dense ones, it is
the baseline a practitioner fits: scikit-learn's ``LinearSVC`` (one-vs-rest, squared hinge),
its C chosen by cross-validation, its decision values turned into probabilities by a
temperature fitted on held-out rows. Dense blocks beside a sparse one are standardised and
divided by ``sqrt(D_i)``: unit mean norm, like TF-IDF rows, so one C suits both.

A multi-label target (an indicator ``[N, K]``) gets K independent binary classifiers: K
logistic regressions on dense features, K ``LinearSVC`` (one-vs-rest) on sparse ones, their
decision values times one fitted scale as the logits of the task's sigmoid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import sparse as sp
from torch import Tensor, nn
from torch.nn import functional as F

from autolayer.heads.base import Fitting, HeadFit, Untuned, register_head
from autolayer.heads.modules import (
    NetHead,
    SparseBatch,
    SparseRows,
    _Standardised,
    n_learned,
    seeded,
    sparse_linear,
    to_tensor,
)

if TYPE_CHECKING:
    from sklearn.svm import LinearSVC

SPARSE_CS = (0.1, 1.0, 10.0)  # the SVM's C, chosen among these by CV (ties: the smaller)
SPARSE_FOLDS = 3  # the CV's folds; a class with fewer rows leaves C = 1 and T = 1
SPARSE_TOL = 1e-3  # liblinear's stopping tolerance (sklearn's default 1e-4)
TEMPERATURES = (1e-2, 1e2)  # the bounds of the fitted temperature
ABSENT = -30.0  # dense path: the bias of a class never seen in training (it never wins)
ABSENT_MARGIN = 1e4  # sparse path: an absent class's bias, this far below the lowest present
# (multi-label, both paths: the bias of a label no training row has, or every row has)


def svm(c: float) -> LinearSVC:
    """The sparse head's classifier at penalty ``c`` (what a test compares it with).

    ``tol`` 1e-3 rather than 1e-4: a third fewer iterations at C = 10, where most of the
    time goes (a late head fits ~40 of these per member), for the same test accuracy (R8
    and R52, 20,000 TF-IDF columns: identical)."""
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, tol=SPARSE_TOL, random_state=0)


class _Scaled(_Standardised):
    """Standardised, then divided by ``sqrt(D)``: a dense block beside a sparse one gets
    rows of unit mean norm, as TF-IDF rows have, so one penalty suits both blocks."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim)
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale


class LinearNet(nn.Module):
    """Per-model standardise -> concatenate -> one ``Linear(ΣD_i, C)``: logits ``[B, C]``.
    The tensor names (``projections.*``, ``head.*``) are what saved heads hold.

    A sparse input (``sparse[i]``; served as :class:`SparseBatch`) has no statistics (an
    ``nn.Identity``, nothing saved) and meets its columns of ``head.weight`` directly; the
    dense ones beside it are :class:`_Scaled`. Without a sparse input, nothing changes."""

    def __init__(self, input_dims: Sequence[int], n_outputs: int, sparse: Sequence[bool]) -> None:
        super().__init__()
        dense = _Scaled if any(sparse) else _Standardised
        self.projections = nn.ModuleList(
            nn.Identity() if is_sparse else dense(dim)
            for dim, is_sparse in zip(input_dims, sparse, strict=True)
        )
        self.head = nn.Linear(sum(input_dims), n_outputs)
        ends = np.cumsum(input_dims).tolist()
        self.blocks = list(zip([0, *ends[:-1]], ends, strict=True))  # each input's columns

    def features(self, inputs: Sequence[Tensor]) -> Tensor:
        """The standardised, concatenated features ``[B, ΣD_i]`` (dense inputs only)."""
        return torch.cat([p(x) for p, x in zip(self.projections, inputs, strict=True)], dim=1)

    def forward(self, inputs: Sequence[Tensor | SparseBatch]) -> Tensor:
        if not any(isinstance(x, SparseBatch) for x in inputs):
            return self.head(self.features(inputs))
        weight = self.head.weight
        parts = [
            sparse_linear(x, weight[:, a:b])
            if isinstance(x, SparseBatch)
            else F.linear(p(x), weight[:, a:b])
            for p, x, (a, b) in zip(self.projections, inputs, self.blocks, strict=True)
        ]
        return sum(parts) + self.head.bias


@register_head("linear")
class LinearHead(Untuned, NetHead):
    """Logistic regression, its L2 penalty chosen by cross-validation on the training rows
    (:func:`autolayer.probe.chosen_alpha`), on dense features; a linear SVM with a fitted
    temperature when an input is sparse (:meth:`_solve_sparse`). Nothing to tune, so one
    configuration.

    After a sparse fit, ``C_`` and ``temperature_`` say what was chosen (not saved: the
    saved weights already hold the temperature)."""

    @classmethod
    def n_parameters(
        cls, input_dims: Sequence[int], n_outputs: int, params: Mapping[str, Any]
    ) -> int:
        return (sum(input_dims) + 1) * n_outputs

    @classmethod
    def describe(cls, params: Mapping[str, Any], n_models: int) -> str:
        return "linear head (logistic regression; a linear SVM on TF-IDF)"

    def _fit(self, fitting: Fitting) -> HeadFit:
        """Fit to convergence; the one entry of the history is the validation metric (the
        training metric without ``val``)."""
        f = fitting
        with seeded(f.seed, f.device) as device:
            x, y = self._start(f.train, f.target, device)
            if any(self.sparse_) and f.target.ndim == 2:
                self._solve_sparse_labels(f.train, x, f.target, f.seed)
            elif any(self.sparse_):
                self._solve_sparse(f.train, x, f.target, f.seed)
            else:
                self._solve(x, y)
            if f.val is None:
                score = self._score(x, f.target)
            else:
                score = self._score([to_tensor(array, device) for array in f.val], f.val_target)
        self.net_.cpu().eval()
        return HeadFit(0, score, (score,), 0.0, n_learned(self.net_))

    @torch.no_grad()
    def _solve(self, x: list[Tensor], y: Tensor) -> None:
        """Logistic regression on the standardised features (sklearn's, its L2 penalty
        chosen by CV on the training rows) set as the Linear's weights; for a multi-label
        target, one binary regression per label."""
        from autolayer.logistic import fit_logistic
        from autolayer.probe import chosen_alpha

        net = self.net_
        features = net.features(x)
        alpha = chosen_alpha(
            features.cpu().numpy(), y.cpu().numpy(), self.metric, device=features.device
        )
        ones = torch.ones(len(features), 1, dtype=features.dtype, device=features.device)
        features = torch.cat([features, ones], dim=1)
        # tol: a probe ranking layers can stop early; a head that predicts cannot
        weights = fit_logistic(features[None], y, alpha, tol=1e-6)[0]  # [K', D+1]
        k = weights.shape[0]  # K' < C when the top classes are missing from training
        net.head.weight.zero_()
        net.head.bias.fill_(ABSENT)  # a class never seen never wins
        net.head.weight[:k] = weights[:, :-1].to(net.head.weight.dtype)
        net.head.bias[:k] = weights[:, -1].to(net.head.bias.dtype)
        if y.ndim == 2:
            pin_constant_labels(net.head.weight, net.head.bias, y.cpu().numpy())

    @torch.no_grad()
    def _solve_sparse(
        self, train: Sequence[Any], x: list[Tensor | SparseRows], y: np.ndarray, seed: int
    ) -> None:
        """``LinearSVC`` on the features the net computes (sparse blocks as given, dense
        ones :class:`_Scaled`), C by stratified CV among ``SPARSE_CS`` on ``self.metric``,
        then a temperature T minimising the NLL of ``softmax(T · scores)`` on the chosen
        C's out-of-fold scores: the Linear holds ``T · coef`` and ``T · intercept``, so the
        task's probabilities are calibrated and their argmax is the SVM's decision.

        A class absent from training gets a bias ``ABSENT_MARGIN`` below the lowest present
        one, not the dense path's -30: T (up to 100) scales the present classes' logits, so
        on an empty TF-IDF row they could all fall below -30 and the absent class win."""
        design = self._design(train, x)
        classes, counts = np.unique(y, return_counts=True)
        self.C_, self.temperature_ = 1.0, 1.0
        if len(classes) > 1 and counts.min() >= SPARSE_FOLDS:
            self.C_, held_out = self._chosen_c(design, y, seed)
            self.temperature_ = _temperature(held_out, np.searchsorted(classes, y))
        weights, bias = _fitted(svm(self.C_), design, y, classes)
        net, t = self.net_, self.temperature_
        net.head.weight.zero_()
        net.head.bias.fill_(min(float(t * bias.min()), 0.0) - ABSENT_MARGIN)
        device = net.head.weight.device
        index = torch.as_tensor(classes, device=device)
        net.head.weight[index] = torch.as_tensor(t * weights, dtype=torch.float32, device=device)
        net.head.bias[index] = torch.as_tensor(t * bias, dtype=torch.float32, device=device)

    @torch.no_grad()
    def _solve_sparse_labels(
        self, train: Sequence[Any], x: list[Tensor | SparseRows], y: np.ndarray, seed: int
    ) -> None:
        """Multi-label: a ``LinearSVC`` per label (one-vs-rest) on the net's features, C by
        CV on the task's strata among ``SPARSE_CS`` on ``self.metric``, then one scale T
        minimising the binary cross-entropy of ``sigmoid(T · decision)`` on the chosen C's
        out-of-fold decisions. The Linear holds ``T · coef`` and ``T · intercept``: a label
        is above 0.5 exactly where its SVM decides it. T is one for all labels (not one
        per label, which a label of a few positives would fit to noise): the task's
        per-label thresholds are what adapts to each label.

        The folds are the probe's for multi-label strata (:func:`autolayer.probe.folds`,
        ``SPARSE_FOLDS`` of them, rare strata pooled). Without a label that has
        ``SPARSE_FOLDS`` positive and negative rows, no fold could judge C: C = 1, T = 1."""
        from autolayer.probe import folds

        design = self._design(train, x)
        truth = np.asarray(y) > 0.5
        self.C_, self.temperature_ = 1.0, 1.0
        positives = truth.sum(axis=0)
        if ((positives >= SPARSE_FOLDS) & (len(truth) - positives >= SPARSE_FOLDS)).any():
            splits = folds(self.task.strata(y), SPARSE_FOLDS, seed, shrink=False)
            self.C_, held_out, fitted = self._chosen_c_labels(design, truth, splits)
            self.temperature_ = _scale(held_out[fitted], truth[fitted])
        weights, bias, fitted = _one_vs_rest(self.C_, design, truth)
        net, t = self.net_, self.temperature_
        net.head.weight.copy_(torch.as_tensor(t * weights, dtype=torch.float32))
        net.head.bias.copy_(torch.as_tensor(t * bias, dtype=torch.float32))
        pin_constant_labels(net.head.weight, net.head.bias, truth)

    def _chosen_c_labels(
        self, design: sp.csr_matrix, truth: np.ndarray, splits: list[np.ndarray]
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """The C of ``SPARSE_CS`` whose out-of-fold decisions score best by ``self.metric``
        (the untuned task's score of their sigmoid, as a trial was scored: a refit with
        tuned thresholds chooses the same C; the first of the best: the smaller), its
        out-of-fold decisions ``[N, K]``, and where they come from a fitted SVM (not a
        label its fold's training rows all have or all lack) ``[N, K]``."""
        from scipy.special import expit

        task = self.task.untuned()
        every = np.arange(len(truth))
        kept = [np.setdiff1d(every, te) for te in splits]
        folds = [(design[tr], truth[tr], te) for tr, te in zip(kept, splits, strict=True)]
        runs, scores = [], []
        for c in SPARSE_CS:
            held_out = np.empty(truth.shape)
            fitted = np.empty(truth.shape, dtype=bool)
            for train_x, train_y, te in folds:
                weights, bias, ok = _one_vs_rest(c, train_x, train_y)
                held_out[te] = design[te] @ weights.T + bias
                fitted[te] = ok
            runs.append((held_out, fitted))
            proba = expit(held_out)
            scores.append(task.score(proba, truth.astype(np.float32), self.metric))
        best = int(np.argmax(scores))
        return SPARSE_CS[best], *runs[best]

    def _design(self, train: Sequence[Any], x: list[Tensor | SparseRows]) -> sp.csr_matrix:
        """The SVM's features ``[N, ΣD_i]``: what the net reads, as one sparse matrix."""
        blocks = [
            sp.csr_matrix(array) if sp.issparse(array) else sp.csr_matrix(p(t).cpu().numpy())
            for p, array, t in zip(self.net_.projections, train, x, strict=True)
        ]
        return sp.hstack(blocks, format="csr")

    def _chosen_c(
        self, design: sp.csr_matrix, y: np.ndarray, seed: int
    ) -> tuple[float, np.ndarray]:
        """The C of ``SPARSE_CS`` whose out-of-fold decisions score best by ``self.metric``
        (the first of the best: the smaller), and its out-of-fold scores ``[N, K]``."""
        from autolayer.probe import folds

        classes = np.unique(y)
        every = np.arange(len(y))
        splits = []  # each fold's rows, sliced once for every C
        for te in folds(np.searchsorted(classes, y), SPARSE_FOLDS, seed):
            train = np.setdiff1d(every, te)
            splits.append((design[train], y[train], design[te], te))
        runs, scores = [], []
        for c in SPARSE_CS:
            held_out = np.empty((len(y), len(classes)))
            for train_x, train_y, test_x, te in splits:
                weights, bias = _fitted(svm(c), train_x, train_y, classes)
                held_out[te] = test_x @ weights.T + bias
            proba = np.zeros((len(y), self.n_outputs_))
            proba[np.arange(len(y)), classes[held_out.argmax(axis=1)]] = 1.0
            runs.append(held_out)
            scores.append(self.task.untuned().score(proba, y, self.metric))
        best = int(np.argmax(scores))
        return SPARSE_CS[best], runs[best]

    def _build(self) -> LinearNet:
        return LinearNet(self.input_dims_, self.n_outputs_, self.sparse_)


def _fitted(
    model: LinearSVC, design: sp.csr_matrix, y: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``model`` fitted on ``design``, ``y`` (all of ``classes`` present) as one row of
    weights ``[K, D]`` and a bias ``[K]`` per class: a two-class SVM's one decision ``s``
    becomes ``(-s/2, s/2)``, whose softmax is ``sigmoid(s)``; a single class, zeros (it
    always wins). Not converging within the iteration budget is tolerated (an estimate, as
    the probe's), not warned about."""
    if len(classes) < 2:
        return np.zeros((1, design.shape[1])), np.zeros(1)
    _quiet_fit(model, design, y)
    weights, bias = model.coef_, model.intercept_
    if len(classes) == 2:
        weights, bias = np.vstack([-weights, weights]) / 2, np.array([-bias[0], bias[0]]) / 2
    return weights, bias


def _quiet_fit(model: LinearSVC, design: sp.csr_matrix, y: np.ndarray) -> None:
    """``model.fit(design, y)``, not converging within the iteration budget tolerated."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(design, y)


def _one_vs_rest(
    c: float, design: sp.csr_matrix, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One binary :func:`svm` at ``c`` per label column of ``truth`` ``[N, K]`` (bool):
    weights ``[K, D]``, bias ``[K]``, and which labels were fitted ``[K]``
    (:func:`autolayer.probe.one_vs_rest`: a constant label gets zero weights, bias ±1)."""
    from autolayer.probe import one_vs_rest

    def fit(x: sp.csr_matrix, column: np.ndarray) -> LinearSVC:
        model = svm(c)
        _quiet_fit(model, x, column)
        return model

    return one_vs_rest(fit, design, truth)


def pin_constant_labels(weight: Tensor, bias: Tensor, truth: np.ndarray) -> None:
    """A label no training row has (every row has) gets zero ``weight`` and ``bias``
    ``-ABSENT_MARGIN`` (``+ABSENT_MARGIN``), in place: its probability is 0 (1) on any row,
    and it is never the most probable label of a row none reaches (the task's
    ``empty="top"``)."""
    truth = np.asarray(truth) > 0.5
    for k in np.flatnonzero(~truth.any(axis=0)):
        weight[k] = 0.0
        bias[k] = -ABSENT_MARGIN
    for k in np.flatnonzero(truth.all(axis=0)):
        weight[k] = 0.0
        bias[k] = ABSENT_MARGIN


def _scale(decisions: np.ndarray, truth: np.ndarray) -> float:
    """The T in ``TEMPERATURES`` minimising the mean binary cross-entropy of
    ``sigmoid(T · decisions)`` against ``truth`` (bool, same shape); 1 without any."""
    from scipy.optimize import minimize_scalar

    if not decisions.size:
        return 1.0
    sign = np.where(truth, -1.0, 1.0)

    def nll(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, sign * math.exp(log_t) * decisions)))

    bounds = tuple(math.log(t) for t in TEMPERATURES)
    return math.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x)


def _temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``TEMPERATURES`` minimising the NLL of ``softmax(T · scores)`` ``[N, K]``
    against class indices ``labels`` (convex in T: a bounded scalar search on log T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    truth = scores[np.arange(len(labels)), labels]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(logsumexp(t * scores, axis=1) - t * truth))

    bounds = tuple(math.log(t) for t in TEMPERATURES)
    return math.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x)
