"""Per-layer linear-probe scores over cached embeddings ``[N, L+1, D]``, all layers at once.

The probe is multinomial logistic regression (sklearn's ``LogisticRegression`` objective), fitted
for every layer in one batched tensor computation by an L-BFGS that keeps a separate history and
step per layer. A closed-form one-vs-all ridge classifier (penalty by leave-one-out) was tried
first: within 0.7 points of logistic regression on two-class MiniLM embeddings (MR), but 3.9
points below it on R52's many unbalanced classes, too far from the usual reference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import issparse
from sklearn.model_selection import StratifiedKFold

from autolayer.device import resolve_device
from autolayer.errors import ConfigError, DataError
from autolayer.metrics import METRICS, macro_f1
from autolayer.metrics import score as metric_value
from autolayer.sampling import stratified_rows

DEFAULT_ALPHA = 1.0  # L2 penalty = 1/C; 1.0 is sklearn's default C
# A layer stops when its largest gradient entry is below TOL. sklearn's lbfgs uses 1e-4; by 3e-4
# held-out accuracy is within 0.2 points of sklearn's (MiniLM embeddings of MR, R8, R52) at
# under half the iterations. At 1e-3, R52's best layer was still 1.2 points short.
TOL = 3e-4
MAX_ITER = 1000
HISTORY = 10  # L-BFGS curvature pairs kept per layer
PRECONDITIONER_ROWS_PER_FEATURE = 4  # rows sampled (see ridge_preconditioner)
MAX_HALVINGS = 30  # backtracking steps before a layer counts as converged
CACHE_BYTES = 16 * 2**20  # features of one group of layers: about a CPU's last-level cache


@dataclass(frozen=True)
class LayerScores:
    """Probe scores per layer (index 0 is the embedding output), read-only."""

    accuracy: np.ndarray  # [L+1] mean over folds
    accuracy_std: np.ndarray  # [L+1] std over folds (0 for a single split)
    macro_f1: np.ndarray  # [L+1]
    macro_f1_std: np.ndarray  # [L+1]
    n_folds: int
    n_examples: int

    @property
    def best_layer(self) -> int:
        """Layer with the highest accuracy; ties go to the shallower layer (cheaper to run)."""
        return int(self.ranking()[0])

    def ranking(self, metric: str = "accuracy") -> np.ndarray:
        """Layer indices best first by ``metric``; ties keep the shallower layer first."""
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}; got {metric!r}")
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
) -> LayerScores:
    """Stratified k-fold probe accuracy and macro-F1 of every layer of ``X`` [N, L+1, D]
    (or of a sparse matrix ``[N, V]``, one state: TF-IDF, fitted by scikit-learn).

    ``alpha`` is the L2 penalty 1/C of sklearn's ``LogisticRegression`` (None: 1.0, its
    default). ``max_examples`` first draws a seeded stratified subsample, to bound the cost on big
    sets. Folds shrink (with a warning) when a class has fewer examples than ``n_folds``.
    ``class_names`` (``y`` being indices into it) names the classes a warning is about.

    All folds are fitted at once on one feature matrix (held-out rows weigh 0), a few layers
    at a time: on a CPU the solver is bound by reading the features, and one layer's rows fit
    in the cache where the whole ``[L+1, N, D]`` stack does not.
    """
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
    return _summarise(runs, len(labels))


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
    [N, L+1, D]: ``(predicted [L+1, N'], y [N'])`` as labels of ``y``'s type.

    The folds are :func:`probe_layers`' for the same ``y``, ``n_folds`` and ``seed``, so two
    calls on different features of the same rows predict the same rows under the same
    folds: their errors can be compared row by row (see :mod:`autolayer.complementarity`).
    ``N'`` < ``N`` only when a class has a single example (left out, warned, by its name in
    ``class_names`` when ``y`` indexes it).
    """
    X, y = _prepared(X, y, n_folds, seed, None, class_names)
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
    rows) on ``x`` [N, D], ``y`` [N] is highest (ties: the weakest), for a linear head on a
    few labels per class.

    With a few dozen rows and hundreds of standardised features sklearn's default (alpha 1)
    overfits: on mpnet's last layer over 5 draws of 32 labels per class, choosing it this
    way lifted test accuracy by 1.4 pt on MR, 0.9 on SST-2 and 0.01 on R8
    (``studies/results/fewshot/penalty.md``). Fewer than ``PENALTY_FOLDS`` × 2 rows of a
    class (a fold would judge it by one or two rows, and the search's CV would pay 20 fits
    per linear head for it; at 8 per class no penalty was better on every set), or more than
    ``PENALTY_ROWS`` rows (where the choice matters little), leave the default."""
    labels = np.unique(np.asarray(y), return_inverse=True)[1]
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


def _prepared(
    X: np.ndarray,
    y: np.ndarray,
    n_folds: int,
    seed: int,
    max_examples: int | None,
    class_names: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked inputs, subsampled to ``max_examples`` (stratified, seeded), singletons out."""
    if issparse(X):
        X = X.tocsr()
        if X.ndim != 2 or np.ndim(y) != 1 or len(y) != X.shape[0]:
            raise DataError(f"y must be 1-D with {X.shape[0]} labels; got shape {np.shape(y)}")
    else:
        _check_arrays(X, y, "X", "y")
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2; got {n_folds}", params=("n_folds",))
    if max_examples is not None and max_examples < 1:
        raise ConfigError(
            f"max_examples must be positive; got {max_examples}", params=("max_examples",)
        )
    if max_examples is not None and max_examples < len(y):
        keep = stratified_rows(np.asarray(y), max_examples, seed)
        X, y = X[keep], np.asarray(y)[keep]
    return _without_singletons(X, np.asarray(y), class_names)


def folds(labels: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Held-out rows of each stratified fold (fewer folds, warned, for a rare class): the
    probe's folds, and the search's under cross-validation."""
    n_folds = _feasible_folds(labels, n_folds)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [te for _, te in folds.split(np.zeros(len(labels)), labels)]


def _held_out(X, labels: np.ndarray, tests: list[np.ndarray], alpha: float | None, dev):
    if issparse(X):
        return _sparse_out_of_fold(X, labels, tests, alpha).to(dev)
    return _out_of_fold(X, labels, tests, alpha, dev)


def _sparse_out_of_fold(
    X, labels: np.ndarray, tests: list[np.ndarray], alpha: float | None
) -> torch.Tensor:
    """Held-out class index [1, N] of a sparse matrix's rows: scikit-learn's ``LinearSVC``
    (the TF-IDF baseline a practitioner fits), fold by fold. Not the dense probe's logistic
    regression: its penalty suits standardised features, and on unit-norm TF-IDF rows it
    underfits (R8, 2,000 screen rows: 89.5 % against the SVM's 96.3 %), and the screen
    dropped TF-IDF on a set where, fitted on all rows, it is level with the best model."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    out = np.empty(len(labels), dtype=np.int64)
    penalty = DEFAULT_ALPHA if alpha is None else _positive(alpha)
    for te in tests:
        train = np.setdiff1d(np.arange(len(labels)), te)
        model = LinearSVC(C=1 / penalty, max_iter=MAX_ITER, random_state=0)
        with warnings.catch_warnings():  # beside dense features it may stop short: an estimate
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X[train], labels[train])
        out[te] = model.predict(X[te])
    return torch.as_tensor(out)[None]


def _out_of_fold(
    X: np.ndarray, labels: np.ndarray, tests: list[np.ndarray], alpha: float | None, dev
) -> torch.Tensor:
    """Held-out class index [L+1, N] of every row and layer: all folds fitted at once on one
    feature matrix (held-out rows weigh 0), a few layers at a time."""
    train = torch.ones(len(labels), len(tests), dtype=torch.bool, device=dev)
    for f, te in enumerate(tests):
        train[te, f] = False
    truth = torch.as_tensor(labels, device=dev)
    n_classes = int(labels.max()) + 1
    out = []
    for group in _layer_groups(X.shape, dev):
        x = _standardise(_layers_first(X[:, group], dev))[0]
        weights = _fit_folds(x, truth, train, alpha, _fold_scales(x, train), n_classes)
        pred = _predict(x, weights)  # [g, N, F]: every fold's prediction of every row
        held = torch.empty(pred.shape[:2], dtype=torch.long, device=dev)
        for f, te in enumerate(tests):
            held[:, te] = pred[:, te, f]
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
) -> LayerScores:
    """Fit on the train arrays, score on the test arrays, every layer at once.

    Shapes: ``X_train`` [N, L+1, D], ``X_test`` [M, L+1, D]. Returns one split's scores
    (``n_folds`` 1, std 0), e.g. the test accuracy per layer reported next to CV scores.
    """
    _check_arrays(X_train, y_train, "X_train", "y_train")
    _check_arrays(X_test, y_test, "X_test", "y_test")
    if X_train.shape[1:] != X_test.shape[1:]:
        raise DataError(f"X_train {X_train.shape} and X_test {X_test.shape} differ in layers/width")
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
    return _summarise([run], len(y_tr))


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


def _fit_folds(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    alpha: float | None,
    scale: torch.Tensor,
    n_classes: int,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> torch.Tensor:
    """Logistic regression of every layer on every fold's training rows → weights
    [L, F, K, P] float64, for prepared ``x`` [L, N, P], ``train`` [N, F] row masks and the
    folds' feature ``scale`` [L, F, P] (see ``_fold_scales``)."""
    n_layers, _, n_features = x.shape
    n_train = train.sum(0).double()  # [F]
    strength = (DEFAULT_ALPHA if alpha is None else _positive(alpha)) / n_train
    strength = strength * (2.0 if n_classes == 2 else 1.0)  # see fit_logistic
    penalty = strength[None, :, None] * scale.square()  # [L, F, P]
    penalty[..., -1] = 0.0  # the intercept
    inverse = ridge_preconditioner(x, penalty.mean(1))
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)
    weight = (train / n_train).to(x.dtype)  # [N, F]: each fold's mean over its own rows
    objective = _Objective(x, onehot, weight, penalty.reshape(-1, 1, n_features), inverse)
    start = torch.zeros(n_layers * train.shape[1], n_classes, n_features, dtype=torch.float64)
    weights = _lbfgs(objective, start.to(x.device), tol, max_iter)
    return weights.view(n_layers, -1, n_classes, n_features)


def _predict(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class indices [L, N, F] of every row under every fold's weights [L, F, K, P]."""
    n_layers, n, _ = x.shape
    logits = x @ weights.flatten(1, 2).to(x.dtype).mT  # [L, N, F*K]
    return logits.view(n_layers, n, weights.shape[1], weights.shape[2]).argmax(-1)


def ridge_preconditioner(x: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """(XᵀX/n + diag(penalty))⁻¹ [L, P, P] float64 for prepared features x [L, n, P] and a
    penalty [L, P] per layer (or one [P] for all).

    It only speeds up the solver, so XᵀX/n comes from a strided sample of a few rows per
    feature, and one matrix serves every CV fold. The matrix is positive definite (every
    penalty but the intercept's is > 0, the intercept column is constant). The inverse is
    L⁻ᵀL⁻¹ with L⁻¹ from a triangular solve of the Cholesky factor: on this machine's MKL
    ``cholesky_inverse`` took 6-40 s instead of 0.5 s whenever the CPU was shared.
    """
    sample = _row_sample(x)
    gram = (sample.transpose(1, 2) @ sample).double() / sample.shape[1]
    factor = torch.linalg.cholesky(gram + torch.diag_embed(penalty.expand(len(x), -1)))
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    root = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
    return root.mT @ root


def _row_sample(x: torch.Tensor) -> torch.Tensor:
    """Every k-th row of x [L, n, D], about PRECONDITIONER_ROWS_PER_FEATURE·D rows in all."""
    return x[:, :: max(1, x.shape[1] // (PRECONDITIONER_ROWS_PER_FEATURE * (x.shape[2] + 1)))]


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float | None = None,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> torch.Tensor:
    """Multinomial logistic regression for every layer at once → weights [L, K, D+1] float64.

    ``x`` [L, n, D+1] holds standardised features plus a last constant column (the intercept,
    unpenalised); ``y`` [n] class indices. Minimises, per layer, the mean cross-entropy plus
    alpha/(2n)·‖W‖²: the objective of sklearn's ``LogisticRegression(C=1/alpha)``, so the
    probe agrees with the usual reference. With two classes the penalty is doubled, because
    softmax weights [w/2, −w/2] carry half the squared norm of sklearn's single binary
    vector w.

    Solver: L-BFGS run independently per layer (and per CV fold) but vectorised over them,
    preconditioned by the inverse ridge matrix (XᵀX/n + alpha/n·I)⁻¹. Embedding features
    are strongly correlated, and this preconditioner makes the problem close to isotropic,
    so it converges in tens of iterations where plain L-BFGS needs hundreds.
    """
    train = torch.ones(x.shape[1], 1, dtype=torch.bool, device=x.device)
    scale = torch.ones(x.shape[0], 1, x.shape[2], dtype=torch.float64, device=x.device)
    return _fit_folds(x, y, train, alpha, scale, int(y.max()) + 1, tol, max_iter)[:, 0]


class _Objective:
    """Penalised mean cross-entropy of every (layer, fold), its gradient and preconditioner.

    ``x`` [L, N, P] features, ``onehot`` [N, K] targets, ``weight`` [N, F] each row's weight
    in each fold's mean (0 when held out), ``penalty`` [L·F, 1, P] per-feature L2 strength,
    ``inverse`` [L, P, P] ≈ (XᵀX/n + diag(penalty))⁻¹, applied as one batched matrix
    product (much cheaper than triangular solves). Weights are [L·F, K, P], class-major, so
    both products with ``x`` read it in its stored order (several times faster on CPU than
    [L, P, K]), and all folds of a layer share one pass over its features.
    """

    def __init__(
        self,
        x: torch.Tensor,
        onehot: torch.Tensor,
        weight: torch.Tensor,
        penalty: torch.Tensor,
        inverse: torch.Tensor,
    ) -> None:
        self.x, self.onehot, self.weight = x, onehot, weight
        self.penalty, self.inverse = penalty, inverse

    def __call__(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [L·F] and gradient [L·F, K, P] (float64) at ``weights`` [L·F, K, P]."""
        n_layers, n, n_features = self.x.shape
        n_folds, n_classes = self.weight.shape[1], self.onehot.shape[1]
        blocks = weights.view(n_layers, n_folds * n_classes, n_features).to(self.x.dtype)
        log_prob = (self.x @ blocks.mT).view(n_layers, n, n_folds, n_classes).log_softmax(-1)
        target = self.onehot[:, None, :]
        nll = -((log_prob * target).sum(-1).double() * self.weight).sum(1)  # [L, F]
        loss = nll.flatten() + 0.5 * (self.penalty * weights.square()).sum((1, 2))
        resid = (log_prob.exp() - target) * self.weight[..., None]
        grad = resid.view(n_layers, n, n_folds * n_classes).mT @ self.x
        return loss, grad.double().view_as(weights) + self.penalty * weights

    def precondition(self, grad: torch.Tensor) -> torch.Tensor:
        """(XᵀX/n + diag(penalty))⁻¹ applied to each class row of ``grad`` [L·F, K, P]."""
        n_layers, n_features = self.inverse.shape[0], self.inverse.shape[1]
        return (grad.view(n_layers, -1, n_features) @ self.inverse).view_as(grad)


def _lbfgs(objective: _Objective, weights: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Preconditioned L-BFGS with Armijo backtracking, each layer with its own history and
    step; a layer stops when its largest gradient entry is below ``tol`` or when no step
    decreases its loss any more (float32 round-off)."""
    loss, grad = objective(weights)
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    scale = torch.full_like(loss, float(weights.shape[1]))  # K: Newton step at W = 0
    stalled = torch.zeros_like(loss, dtype=torch.bool)
    for _ in range(max_iter):
        active = (grad.abs().amax((1, 2)) > tol) & ~stalled
        if not active.any():
            break
        step = -_two_loop(grad, history, scale, objective.precondition) * _col(active)
        new_weights, new_loss, new_grad, stalled_now = _backtrack(
            objective, weights, loss, grad, step
        )
        stalled |= stalled_now & active
        s, y = new_weights - weights, new_grad - grad
        sy = _dot(s, y)
        curved = sy > 1e-12
        rho = torch.where(curved, 1.0 / sy.clamp_min(1e-12), 0.0)
        history = [*history, (s, y, rho)][-HISTORY:]
        y_py = _dot(y, objective.precondition(y))
        scale = torch.where(curved & (y_py > 0), sy / y_py.clamp_min(1e-300), scale)
        weights, loss, grad = new_weights, new_loss, new_grad
    return weights


def _two_loop(
    grad: torch.Tensor,
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scale: torch.Tensor,
    precondition: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """L-BFGS inverse-Hessian estimate times ``grad`` [L, K, P], per layer; the initial
    estimate is ``scale`` [L] times the preconditioner. Pairs with rho = 0 are skipped."""
    q = grad.clone()
    coefs = []
    for s, y, rho in reversed(history):
        a = rho * _dot(s, q)
        q.addcmul_(_col(a), y, value=-1.0)
        coefs.append(a)
    r = _col(scale) * precondition(q)
    for (s, y, rho), a in zip(history, reversed(coefs), strict=True):
        r.addcmul_(_col(a - rho * _dot(y, r)), s)
    return r


def _backtrack(
    objective: _Objective,
    weights: torch.Tensor,
    loss: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halve each layer's step until its loss drops enough (Armijo); returns the new
    weights, loss, gradient and a [L] mask of layers that found no such step (kept still)."""
    slope = _dot(grad, step)
    size = torch.ones_like(loss)
    for _ in range(MAX_HALVINGS):
        trial = weights + _col(size) * step
        new_loss, new_grad = objective(trial)
        ok = new_loss <= loss + 1e-4 * size * slope
        if ok.all():
            break
        size = torch.where(ok, size, size / 2)
    keep = _col(ok)
    return (
        torch.where(keep, trial, weights),
        torch.where(ok, new_loss, loss),
        torch.where(keep, new_grad, grad),
        ~ok,
    )


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer inner product of [L, K, P] blocks → [L] in one op (each small op is a thread
    synchronisation, which gets slow when the CPU is shared)."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def _col(v: torch.Tensor) -> torch.Tensor:
    """[L] → [L, 1, 1], to scale each layer's block."""
    return v[:, None, None]


def _positive(alpha: float) -> float:
    """``alpha`` if it is a usable penalty."""
    if not alpha > 0:
        raise ConfigError(f"alpha must be a positive number; got {alpha}")
    return float(alpha)


def _summarise(runs: list[tuple[torch.Tensor, ...]], n_examples: int) -> LayerScores:
    """Mean and sample std (ddof 1, as the standard errors built on it need; 0 for one
    split) over folds of per-fold (accuracy [L], macro-F1 [L]) tensors."""
    acc, f1 = (torch.stack(parts).cpu().numpy() for parts in zip(*runs, strict=True))
    ddof = 1 if len(runs) > 1 else 0
    return LayerScores(
        accuracy=acc.mean(0),
        accuracy_std=acc.std(0, ddof=ddof),
        macro_f1=f1.mean(0),
        macro_f1_std=f1.std(0, ddof=ddof),
        n_folds=len(runs),
        n_examples=n_examples,
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
    if np.ndim(y) != 1 or len(y) != len(X):
        raise DataError(f"{y_name} must be 1-D with {len(X)} labels; got shape {np.shape(y)}")
    _check_finite(X, x_name)


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
