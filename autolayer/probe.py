"""Per-layer linear-probe scores over cached embeddings ``[N, L+1, D]``, all layers at once.

The probe is multinomial logistic regression (sklearn's ``LogisticRegression`` objective), fitted
for every layer and fold in one batched tensor computation by :mod:`autolayer.logistic`. A
closed-form one-vs-all ridge classifier (penalty by leave-one-out) was tried first: within 0.7
points of logistic regression on two-class MiniLM embeddings (MR), but 3.9 points below it on
R52's many unbalanced classes, too far from the usual reference.

A multi-label target (a 0/1 indicator ``[N, K]``) is probed by one binary logistic
regression per label, in the same batched solver; its held-out probabilities are scored as
a search trial's are (:class:`autolayer.task.MultiLabel`: the best global threshold on the
rows scored), and its folds are stratified by each row's rarest label.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.model_selection import StratifiedKFold

from autolayer.device import resolve_device
from autolayer.errors import ConfigError, DataError
from autolayer.logistic import (
    DEFAULT_ALPHA,
    MAX_ITER,
    fit_logistic,
    fit_logistic_folds,
    resolved_alpha,
)
from autolayer.metrics import METRICS, MULTI_LABEL_METRICS, macro_f1
from autolayer.metrics import score as metric_value
from autolayer.sampling import rarest_label, stratified_rows
from autolayer.task import MultiLabel

if TYPE_CHECKING:
    from sklearn.svm import LinearSVC

CACHE_BYTES = 16 * 2**20  # features of one group of layers: about a CPU's last-level cache


@dataclass(frozen=True)
class LayerScores:
    """Probe scores per layer (index 0 is the embedding output), read-only.

    A multi-label probe's ``accuracy`` is its subset accuracy (sklearn's ``accuracy_score``
    of indicator rows) and ``macro_f1`` its macro-F1 over labels; its other metrics are in
    ``extra`` and read as attributes too (``scores.micro_f1``, ``scores.micro_f1_std``).
    """

    accuracy: np.ndarray  # [L+1] mean over folds
    accuracy_std: np.ndarray  # [L+1] std over folds (0 for a single split)
    macro_f1: np.ndarray  # [L+1]
    macro_f1_std: np.ndarray  # [L+1]
    n_folds: int
    n_examples: int
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # name and name_std → [L+1]
    metric: str = "accuracy"  # what best_layer ranks by

    def __getattr__(self, name: str) -> np.ndarray:
        """A metric of ``extra`` (its mean, or its std as ``<name>_std``) as an attribute,
        as the two single-label metrics are."""
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics scored: the two fields', then those of ``extra``."""
        return (*METRICS, *(m for m in self.extra if not m.endswith("_std")))

    @property
    def best_layer(self) -> int:
        """Layer with the best ``metric`` (accuracy unless the probe was asked for another);
        ties go to the shallower layer (cheaper to run)."""
        return int(self.ranking()[0])

    def ranking(self, metric: str | None = None) -> np.ndarray:
        """Layer indices best first by ``metric`` (None: ``self.metric``); ties keep the
        shallower layer first."""
        metric = self.metric if metric is None else metric
        if metric not in self.metrics:
            raise ConfigError(f"metric must be one of {self.metrics}; got {metric!r}")
        return np.argsort(-getattr(self, metric), kind="stable")


def probe_layers(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    alpha: float | None = None,
    max_examples: int | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
    metric: str | None = None,
) -> LayerScores:
    """Stratified k-fold probe accuracy and macro-F1 of every layer of ``X`` [N, L+1, D]
    (or of a sparse matrix ``[N, V]``, one state: TF-IDF, fitted by scikit-learn); for a
    multi-label indicator ``y`` [N, K], micro-, macro-, samples-F1 and subset accuracy.

    ``alpha`` is the L2 penalty 1/C of sklearn's ``LogisticRegression`` (None: 1.0, its
    default). ``max_examples`` first draws a seeded stratified subsample, to bound the cost on big
    sets. Folds shrink (with a warning) when a class has fewer examples than ``n_folds``
    (multi-label: never; folds stratified by each row's rarest label).
    ``class_names`` (``y`` being indices into it) names the classes a warning is about.
    ``metric`` is what :attr:`LayerScores.best_layer` ranks by (None: the task's default,
    accuracy or micro-F1).

    All folds are fitted at once on one feature matrix (held-out rows weigh 0), a few layers
    at a time: on a CPU the solver is bound by reading the features, and one layer's rows fit
    in the cache where the whole ``[L+1, N, D]`` stack does not.
    """
    if np.ndim(y) == 2:
        return _probe_multi_label(X, y, n_folds, seed, alpha, max_examples, device, metric)
    _check_metric(metric, METRICS)
    X, y = _prepared(X, y, n_folds, seed, max_examples, class_names)
    labels = _encode(y)
    tests = folds(labels, n_folds, seed)
    dev = resolve_device(device)
    pred = _held_out(X, labels, tests, alpha, dev)  # [L+1, N]
    truth = torch.as_tensor(labels, device=dev)
    n_classes = int(labels.max()) + 1
    runs = [
        ((pred[:, te] == truth[te]).double().mean(1), macro_f1(pred[:, te], truth[te], n_classes))
        for te in tests
    ]
    return _summarise(runs, len(labels), metric=metric or "accuracy")


def _probe_multi_label(X, y, n_folds, seed, alpha, max_examples, device, metric) -> LayerScores:
    """:func:`probe_layers` of a multi-label indicator ``y``: each fold's held-out
    probabilities scored by every multi-label metric at its own best global threshold."""
    _check_metric(metric, MULTI_LABEL_METRICS)
    X, y = _prepared(X, y, n_folds, seed, max_examples, None)
    tests = folds(rarest_label(y), n_folds, seed, shrink=False)
    proba = _held_out(X, y, tests, alpha, resolve_device(device)).cpu().numpy()  # [L+1, N, K]
    runs = [_multi_label_scores(proba[:, te], y[te]) for te in tests]
    return _summarise(runs, len(y), MULTI_LABEL_METRICS, metric or MultiLabel.default_metric)


def _multi_label_scores(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every multi-label metric [L] of held-out ``proba`` [L, n, K] against ``y`` [n, K],
    in ``MULTI_LABEL_METRICS`` order, each at its best global threshold (as a trial is
    scored before its thresholds are tuned)."""
    return tuple(MultiLabel().scores(proba, y, MULTI_LABEL_METRICS))


def _check_metric(metric: str | None, allowed: tuple[str, ...]) -> None:
    if metric is not None and metric not in allowed:
        raise ConfigError(f"metric must be one of {allowed}; got {metric!r}", params=("metric",))


def out_of_fold(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    alpha: float | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's probe prediction from the fold that held it out, for every layer of ``X``
    [N, L+1, D]: ``(predicted [L+1, N'], y [N'])`` as labels of ``y``'s type; for a
    multi-label indicator ``y`` [N, K], ``(probabilities [L+1, N, K], y)`` (a decision
    needs a threshold, which the caller fits: see :mod:`autolayer.complementarity`).

    The folds are :func:`probe_layers`' for the same ``y``, ``n_folds`` and ``seed``, so two
    calls on different features of the same rows predict the same rows under the same
    folds: their errors can be compared row by row (see :mod:`autolayer.complementarity`).
    ``N'`` < ``N`` only when a class has a single example (left out, warned, by its name in
    ``class_names`` when ``y`` indexes it).
    """
    X, y = _prepared(X, y, n_folds, seed, None, class_names)
    if y.ndim == 2:
        tests = folds(rarest_label(y), n_folds, seed, shrink=False)
        return _held_out(X, y, tests, alpha, resolve_device(device)).cpu().numpy(), y
    labels = _encode(y)
    tests = folds(labels, n_folds, seed)
    pred = _held_out(X, labels, tests, alpha, resolve_device(device))
    return np.unique(y)[pred.cpu().numpy()], y


PENALTIES = (1.0, 10.0, 100.0, 1000.0)  # alpha = 1/C: sklearn's default C, then stronger
PENALTY_ROWS = 2000  # above it, chosen_alpha keeps the default
PENALTY_FOLDS = 5  # chosen_alpha's folds, each with 2 or more rows of every class


def chosen_alpha(
    x: np.ndarray,
    y: np.ndarray,
    metric: str = "accuracy",
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """The L2 penalty among ``PENALTIES`` whose CV ``metric`` (pooled over the held-out
    rows) on ``x`` [N, D], ``y`` [N] (or a multi-label indicator [N, K]) is highest (ties:
    the weakest), for a linear head on a few labels per class.

    With a few dozen rows and hundreds of standardised features sklearn's default (alpha 1)
    overfits: on mpnet's last layer over 5 draws of 32 labels per class, choosing it this
    way lifted test accuracy by 1.4 pt on MR, 0.9 on SST-2 and 0.01 on R8
    (``studies/results/fewshot/penalty.md``). Fewer than ``PENALTY_FOLDS`` × 2 rows of a
    class (a fold would judge it by one or two rows, and the search's CV would pay 20 fits
    per linear head for it; at 8 per class no penalty was better on every set), or more than
    ``PENALTY_ROWS`` rows (where the choice matters little), leave the default; for
    multi-label, fewer than that many positive rows of a label."""
    y = np.asarray(y)
    if y.ndim == 2:
        return _chosen_multi_label_alpha(np.asarray(x), y, metric, seed, device)
    labels = np.unique(y, return_inverse=True)[1]
    rarest = int(np.bincount(labels).min())
    if labels.max() < 1 or rarest < 2 * PENALTY_FOLDS or len(labels) > PENALTY_ROWS:
        return DEFAULT_ALPHA
    tests = folds(labels, PENALTY_FOLDS, seed)
    X = np.asarray(x)[:, None, :]  # one "layer": the whole feature vector
    dev = resolve_device(device)
    truth = torch.as_tensor(labels, device=dev)
    scores = [
        metric_value(_held_out(X, labels, tests, alpha, dev)[0], truth, metric)
        for alpha in PENALTIES
    ]
    return PENALTIES[int(np.argmax(scores))]  # the first of the best: the weakest


def _chosen_multi_label_alpha(x: np.ndarray, y: np.ndarray, metric: str, seed: int, device):
    """:func:`chosen_alpha` for an indicator ``y``: each penalty's pooled held-out
    probabilities scored by the multi-label task (its best global threshold)."""
    if (y > 0).sum(0).min() < 2 * PENALTY_FOLDS or len(y) > PENALTY_ROWS:
        return DEFAULT_ALPHA
    tests = folds(rarest_label(y), PENALTY_FOLDS, seed, shrink=False)
    dev = resolve_device(device)
    target, task = y.astype(np.float32), MultiLabel()
    held_out = (_held_out(x[:, None, :], target, tests, a, dev)[0] for a in PENALTIES)
    scores = [task.score(proba.cpu().numpy(), y, metric) for proba in held_out]
    return PENALTIES[int(np.argmax(scores))]


def _prepared(
    X: np.ndarray,
    y: np.ndarray,
    n_folds: int,
    seed: int,
    max_examples: int | None,
    class_names: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked inputs, subsampled to ``max_examples`` (stratified, seeded), singletons out
    (single-label; a multi-label indicator is stratified by each row's rarest label)."""
    if issparse(X):
        X = X.tocsr()
        _check_target(y, X.shape[0], "y")
    else:
        _check_arrays(X, y, "X", "y")
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2; got {n_folds}", params=("n_folds",))
    if max_examples is not None and max_examples < 1:
        raise ConfigError(
            f"max_examples must be positive; got {max_examples}", params=("max_examples",)
        )
    y = np.asarray(y)
    if max_examples is not None and max_examples < len(y):
        keep = stratified_rows(rarest_label(y) if y.ndim == 2 else y, max_examples, seed)
        X, y = X[keep], y[keep]
    return (X, y) if y.ndim == 2 else _without_singletons(X, y, class_names)


def folds(labels: np.ndarray, n_folds: int, seed: int, *, shrink: bool = True) -> list[np.ndarray]:
    """Held-out rows of each fold stratified by ``labels`` (fewer folds, warned, for a rare
    class): the probe's folds, by class, and the search's under cross-validation, by the
    task's strata (:meth:`autolayer.task.Task.strata`; the class for single-label).

    ``shrink`` False keeps ``n_folds`` whatever the strata, pooling those with fewer rows
    than folds: multi-label strata (each row's rarest label), where a label with a single
    positive row would otherwise leave one fold, and a rare label is still learnt from the
    rows that hold it among others."""
    if shrink:
        n_folds = _feasible_folds(labels, n_folds)
    else:
        check_folds(len(labels), n_folds)
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        labels = np.where(counts[inverse] < n_folds, -1, labels)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a pool smaller than the folds: spread as it can be
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        return [te for _, te in folds.split(np.zeros(len(labels)), labels)]


def _held_out(X, target: np.ndarray, tests: list[np.ndarray], alpha: float | None, dev):
    """Held-out class indices [L+1, N] of every row and layer; for an indicator ``target``
    [N, K], held-out probabilities [L+1, N, K]."""
    if issparse(X):
        return _sparse_out_of_fold(X, target, tests, alpha).to(dev)
    logits = _out_of_fold(X, target, tests, alpha, dev)
    return logits.sigmoid() if target.ndim == 2 else logits.argmax(-1)


def _sparse_out_of_fold(
    X, target: np.ndarray, tests: list[np.ndarray], alpha: float | None
) -> torch.Tensor:
    """Held-out class index [1, N] of a sparse matrix's rows: scikit-learn's ``LinearSVC``
    (the TF-IDF baseline a practitioner fits), fold by fold. Not the dense probe's logistic
    regression: its penalty suits standardised features, and on unit-norm TF-IDF rows it
    underfits (R8, 2,000 screen rows: 89.5 % against the SVM's 96.3 %), and the screen
    dropped TF-IDF on a set where, fitted on all rows, it is level with the best model.

    An indicator ``target`` [N, K] gets one SVM per label (one-vs-rest) and [1, N, K] the
    sigmoid of its decision values: 0.5 is the SVM's own decision, and the score's
    threshold grid moves it along the margin as it moves a probability."""
    out = np.empty(target.shape, dtype=np.int64 if target.ndim == 1 else np.float32)
    for te in tests:
        train = np.setdiff1d(np.arange(len(target)), te)
        if target.ndim == 1:
            out[te] = _fitted_svm(X[train], target[train], alpha).predict(X[te])
        else:
            out[te] = _one_vs_rest(X[train], target[train], X[te], alpha)
    held = torch.as_tensor(out)[None]
    return held.sigmoid() if target.ndim == 2 else held


def _one_vs_rest(x_train, y_train: np.ndarray, x_test, alpha: float | None) -> np.ndarray:
    """Decision values [M, K] of one ``LinearSVC`` per label of an indicator ``y_train``
    (:func:`one_vs_rest`: a label with no positive, or no negative, training row gets the
    margin -1, or +1)."""
    weights, bias, _ = one_vs_rest(lambda x, y: _fitted_svm(x, y, alpha), x_train, y_train > 0)
    return (x_test @ weights.T + bias).astype(np.float32)


def one_vs_rest(
    fit: Callable[[Any, np.ndarray], LinearSVC], x, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One binary linear classifier per label column of ``truth`` ``[N, K]`` (bool), each
    ``fit(x, column)``: weights ``[K, D]``, bias ``[K]``, and which labels were fitted
    ``[K]``. A label every row has (none has) is not fitted: zero weights and bias +1 (-1),
    the sign scikit-learn's ``OneVsRestClassifier`` decides for it. The sparse probe and the
    sparse linear head (:mod:`autolayer.heads.linear`) share it, each with its own SVM."""
    n_labels = truth.shape[1]
    weights, bias = np.zeros((n_labels, x.shape[1])), np.zeros(n_labels)
    fitted = truth.any(axis=0) & ~truth.all(axis=0)
    for k in range(n_labels):
        if not fitted[k]:
            bias[k] = 1.0 if truth[0, k] else -1.0
            continue
        model = fit(x, truth[:, k])
        weights[k], bias[k] = model.coef_[0], model.intercept_[0]
    return weights, bias, fitted


def _fitted_svm(x, y: np.ndarray, alpha: float | None):
    """The sparse probe's ``LinearSVC`` (C = 1/alpha) fitted on ``x``, ``y``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    model = LinearSVC(C=1 / resolved_alpha(alpha), max_iter=MAX_ITER, random_state=0)
    with warnings.catch_warnings():  # beside dense features it may stop short: an estimate
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _out_of_fold(
    X: np.ndarray, target: np.ndarray, tests: list[np.ndarray], alpha: float | None, dev
) -> torch.Tensor:
    """Held-out logits [L+1, N, K] of every row and layer: all folds fitted at once on one
    feature matrix (held-out rows weigh 0), a few layers at a time. ``target``: class
    indices [N], or an indicator [N, K] (one sigmoid per label)."""
    train = torch.ones(len(target), len(tests), dtype=torch.bool, device=dev)
    for f, te in enumerate(tests):
        train[te, f] = False
    if target.ndim == 2:
        truth = torch.as_tensor(np.asarray(target, dtype=np.float32), device=dev)  # a copy
        n_outputs = target.shape[1]
    else:
        truth = torch.as_tensor(target, device=dev)
        n_outputs = int(target.max()) + 1
    out = []
    for group in _layer_groups(X.shape, dev):
        x = _standardise(_layers_first(X[:, group], dev))[0]
        weights = fit_logistic_folds(x, truth, train, alpha, _fold_scales(x, train), n_outputs)
        logits = _logits(x, weights)  # [g, N, F, K]: every fold's logits of every row
        held = torch.empty(logits.shape[0], len(target), n_outputs, device=dev)
        for f, te in enumerate(tests):
            held[:, te] = logits[:, te, f]
        out.append(held)
    return torch.cat(out)


def probe_layers_holdout(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    alpha: float | None = None,
    device: str | None = None,
    metric: str | None = None,
) -> LayerScores:
    """Fit on the train arrays, score on the test arrays, every layer at once.

    Shapes: ``X_train`` [N, L+1, D], ``X_test`` [M, L+1, D]; ``y`` class labels, or
    multi-label indicators [N, K] and [M, K]. Returns one split's scores (``n_folds`` 1,
    std 0), e.g. the test accuracy per layer reported next to CV scores; ``metric`` as for
    :func:`probe_layers`.
    """
    _check_arrays(X_train, y_train, "X_train", "y_train")
    _check_arrays(X_test, y_test, "X_test", "y_test")
    if X_train.shape[1:] != X_test.shape[1:]:
        raise DataError(f"X_train {X_train.shape} and X_test {X_test.shape} differ in layers/width")
    if np.ndim(y_train) == 2 or np.ndim(y_test) == 2:
        return _holdout_multi_label(X_train, y_train, X_test, y_test, alpha, device, metric)
    _check_metric(metric, METRICS)
    classes, y_tr = np.unique(np.asarray(y_train), return_inverse=True)
    if len(classes) < 2:
        raise DataError("y_train has one class; a probe needs at least 2")
    y_te = _encode_like(np.asarray(y_test), classes)
    dev = resolve_device(device)
    x_tr, x_te = _standardise(_layers_first(X_train, dev), _layers_first(X_test, dev))
    weights = fit_logistic(x_tr, torch.as_tensor(y_tr, device=dev), alpha)
    pred = (x_te @ weights.to(x_te.dtype).mT).argmax(-1)  # [L, M]
    truth = torch.as_tensor(y_te, device=dev)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    run = ((pred == truth).double().mean(1), macro_f1(pred, truth, n_classes))
    return _summarise([run], len(y_tr), metric=metric or "accuracy")


def _holdout_multi_label(X_train, y_train, X_test, y_test, alpha, device, metric) -> LayerScores:
    """:func:`probe_layers_holdout` of multi-label indicators: one binary logistic
    regression per label, the test rows' probabilities scored as :func:`probe_layers`'."""
    _check_metric(metric, MULTI_LABEL_METRICS)
    if np.ndim(y_train) != 2 or np.shape(y_train)[1:] != np.shape(y_test)[1:]:
        raise DataError(
            f"y_train {np.shape(y_train)} and y_test {np.shape(y_test)} differ in labels"
        )
    dev = resolve_device(device)
    x_tr, x_te = _standardise(_layers_first(X_train, dev), _layers_first(X_test, dev))
    target = torch.as_tensor(np.asarray(y_train), dtype=torch.float32, device=dev)
    weights = fit_logistic(x_tr, target, alpha)
    proba = (x_te @ weights.to(x_te.dtype).mT).sigmoid().cpu().numpy()  # [L, M, K]
    run = _multi_label_scores(proba, np.asarray(y_test))
    return _summarise([run], len(y_train), MULTI_LABEL_METRICS, metric or MultiLabel.default_metric)


def _layer_groups(shape: tuple[int, ...], device: torch.device) -> list[slice]:
    """Consecutive layers whose features fit in about CACHE_BYTES (all of them on a GPU)."""
    n, n_layers, width = shape
    size = n_layers if device.type == "cuda" else max(1, CACHE_BYTES // (4 * n * (width + 1)))
    return [slice(i, min(i + size, n_layers)) for i in range(0, n_layers, size)]


def _standardise(x_tr: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``x_tr`` and ``others`` scaled with ``x_tr``'s statistics (as sklearn's
    ``StandardScaler``) plus a constant last column for the intercept: [L, n, D] →
    [L, n, D+1], each in one new buffer."""
    mean = x_tr.mean(1, keepdim=True)
    out = [_shifted_with_bias(x, mean) for x in (x_tr, *others)]
    std = (out[0][..., :-1].square().sum(1, keepdim=True) / x_tr.shape[1]).sqrt()
    std = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, 1.0)  # constant: as is
    for x in out:
        x[..., :-1] /= std
    return out


def _shifted_with_bias(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """x − mean with a constant-1 column appended: [L, n, D] → [L, n, D+1]."""
    out = torch.empty(*x.shape[:2], x.shape[2] + 1, dtype=x.dtype, device=x.device)
    torch.sub(x, mean, out=out[..., :-1])
    out[..., -1] = 1.0
    return out


def _fold_scales(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Each fold's own standard deviation [L, F, P] of the (all-row standardised) features.

    Standardising with a fold's training statistics, as sklearn's ``StandardScaler`` in a CV
    pipeline does, is an affine map of the features; the fitted model is then the same as
    on the shared features with the fold's penalty scaled by its variance (the shift goes
    into the unpenalised intercept). So all folds share one matrix and differ in penalty.
    """
    weight = train.to(x.dtype) / train.sum(0)  # [N, F]
    mean = torch.einsum("nf,lnp->lfp", weight, x)
    square = torch.einsum("nf,lnp->lfp", weight, x.square())
    std = (square - mean.square()).clamp_min(0).sqrt().double()
    return torch.where(std > 1e-6, std, 1.0)


def _logits(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Logits [L, N, F, K] of every row under every fold's weights [L, F, K, P]."""
    n_layers, n, _ = x.shape
    logits = x @ weights.flatten(1, 2).to(x.dtype).mT  # [L, N, F*K]
    return logits.view(n_layers, n, weights.shape[1], weights.shape[2])


def _summarise(
    runs: list[tuple[torch.Tensor | np.ndarray, ...]],
    n_examples: int,
    names: tuple[str, ...] = METRICS,
    metric: str = "accuracy",
) -> LayerScores:
    """Mean and sample std (ddof 1, as the standard errors built on it need; 0 for one
    split) over folds of per-fold scores [L], one per metric of ``names`` (single-label:
    accuracy and macro-F1; multi-label: ``MULTI_LABEL_METRICS``, subset accuracy standing
    as the accuracy). ``metric``: what the scores' best layer ranks by."""
    columns = zip(names, zip(*runs, strict=True), strict=True)
    per_fold = {
        n: torch.stack([torch.as_tensor(p) for p in parts]).cpu().numpy() for n, parts in columns
    }
    ddof = 1 if len(runs) > 1 else 0
    mean = {n: a.mean(0) for n, a in per_fold.items()}
    std = {n: a.std(0, ddof=ddof) for n, a in per_fold.items()}
    accuracy = "accuracy" if "accuracy" in names else "subset_accuracy"
    extra = {}
    for name in (n for n in names if n not in METRICS):
        extra[name], extra[f"{name}_std"] = mean[name], std[name]
    return LayerScores(
        accuracy=mean[accuracy],
        accuracy_std=std[accuracy],
        macro_f1=mean["macro_f1"],
        macro_f1_std=std["macro_f1"],
        n_folds=len(runs),
        n_examples=n_examples,
        extra=extra,
        metric=metric,
    )


def _layers_first(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, L, D] array → float32 tensor [L, N, D] on ``device``, so layers form the batch.

    Read-only inputs (memory-mapped cache arrays) are copied: torch wants writable memory.
    """
    X = np.asarray(X, dtype=np.float32)
    if not X.flags.writeable:
        X = X.copy()
    return torch.from_numpy(X).to(device).transpose(0, 1)


def _encode(y: np.ndarray) -> np.ndarray:
    """Class indices [N] for labels of any type, with the class checks CV needs."""
    classes, labels = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise DataError("y has one class; a probe needs at least 2")
    if len(labels) < 2 * len(classes):
        raise DataError(
            f"{len(labels)} examples for {len(classes)} classes; a probe needs at least "
            f"2 per class ({2 * len(classes)})"
        )
    return labels


def _encode_like(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class indices of ``y`` in the training ``classes``; unseen labels are an error."""
    unseen = np.setdiff1d(y, classes)
    if len(unseen):
        raise DataError(f"y_test has labels absent from y_train: {unseen[:5].tolist()}")
    return np.searchsorted(classes, y)


def _without_singletons(
    X: np.ndarray, y: np.ndarray, class_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Leave out classes with one example (warned, by name): no stratified fold can test
    them, and they move a layer's score by at most one example."""
    classes, counts = np.unique(y, return_counts=True)
    single = classes[counts == 1]
    if len(single) == 0:
        return X, y
    if len(classes) - len(single) < 2:
        raise DataError("fewer than 2 classes have 2+ examples; a probe needs at least 2")
    named = [repr(class_names[c]) if class_names is not None else str(c) for c in single[:5]]
    shown = ", ".join(named) + (" …" if len(single) > 5 else "")
    warnings.warn(
        f"{len(single)} class(es) with a single example among the rows probed, left out: {shown}",
        stacklevel=3,
    )
    keep = np.flatnonzero(~np.isin(y, single))
    return X[keep], y[keep]


def check_folds(n_examples: int, n_folds: int) -> None:
    """Fail before extraction (not after it) when cross-validation cannot run at all."""
    if n_folds < 2:
        raise ConfigError(f"n_folds must be >= 2; got {n_folds}", params=("n_folds",))
    if n_examples < n_folds:
        raise DataError(
            f"{n_examples} examples is fewer than n_folds ({n_folds})", params=("n_folds",)
        )


def _feasible_folds(labels: np.ndarray, n_folds: int) -> int:
    """``n_folds``, or fewer (warned) when the rarest class cannot fill every fold."""
    check_folds(len(labels), n_folds)
    rarest = int(np.bincount(labels).min())
    if rarest >= n_folds:
        return n_folds
    warnings.warn(
        f"the rarest class has {rarest} examples, fewer than the {n_folds} folds asked for: "
        f"using {rarest} folds",
        stacklevel=3,
    )
    return rarest


def _check_arrays(X: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    """Shape and finiteness checks with one-line messages naming the offending part."""
    if np.ndim(X) != 3:
        raise DataError(f"{x_name} must be 3-D [N, L+1, D]; got shape {np.shape(X)}")
    _check_target(y, len(X), y_name)
    _check_finite(X, x_name)


def _check_target(y: np.ndarray, n_rows: int, name: str) -> None:
    """``y``: 1-D labels of ``n_rows`` rows, or a multi-label 0/1 indicator [n_rows, K]."""
    if np.ndim(y) == 2 and len(y) == n_rows and np.shape(y)[1] > 0:
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{name} must be a 0/1 indicator [N, K] for multi-label labels")
        return
    if np.ndim(y) != 1 or len(y) != n_rows:
        raise DataError(f"{name} must be 1-D with {n_rows} labels; got shape {np.shape(y)}")


def _check_finite(X: np.ndarray, name: str) -> None:
    """Raise naming the layers of ``X`` [N, L+1, D] that hold NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(X).all(axis=(0, 2)))
    if len(bad):
        raise DataError(f"{name} has NaN/inf in layer(s) {bad.tolist()}")


def rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ of two layer-score vectors; 1.0 when both are constant (same ranking)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float(np.ptp(a) == np.ptp(b) == 0)
    return float(spearmanr(a, b).statistic)
