"""Many logistic regressions fitted at once: one per layer (and per CV fold).

Each minimises the objective of sklearn's ``LogisticRegression``, so a fit agrees with the
usual reference: multinomial for class indices, or one independent binary (sigmoid)
regression per label for a multi-label indicator target. The solver is an L-BFGS vectorised
over the batch, each member with its own curvature history, step and stopping test,
preconditioned by an inverse ridge matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autolayer.errors import ConfigError

DEFAULT_ALPHA = 1.0  # L2 penalty = 1/C; 1.0 is sklearn's default C
# A layer stops when its largest gradient entry is below TOL. sklearn's lbfgs uses 1e-4; by 3e-4
# held-out accuracy is within 0.2 points of sklearn's (MiniLM embeddings of MR, R8, R52) at
# under half the iterations. At 1e-3, R52's best layer was still 1.2 points short.
TOL = 3e-4
MAX_ITER = 1000
HISTORY = 10  # L-BFGS curvature pairs kept per layer
PRECONDITIONER_ROWS_PER_FEATURE = 4  # rows sampled (see ridge_preconditioner)
MAX_HALVINGS = 30  # backtracking steps before a layer counts as converged


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float | None = None,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> torch.Tensor:
    """Logistic regression for every layer at once → weights [L, K, D+1] float64.

    ``x`` [L, n, D+1] holds standardised features plus a last constant column (the intercept,
    unpenalised); ``y`` [n] class indices (multinomial), or a float indicator [n, K]
    (multi-label: K independent binary regressions, each sklearn's objective on its column,
    so no penalty doubling; probabilities are the sigmoid of ``x @ W^T``). Minimises, per
    layer, the mean cross-entropy plus alpha/(2n)·‖W‖²: the objective of sklearn's
    ``LogisticRegression(C=1/alpha)``, so the fit agrees with the usual reference. With two
    classes (softmax) the penalty is doubled, because softmax weights [w/2, −w/2] carry half
    the squared norm of sklearn's single binary vector w.

    Solver: L-BFGS run independently per layer (and per CV fold) but vectorised over them,
    preconditioned by the inverse ridge matrix (XᵀX/n + alpha/n·I)⁻¹. Embedding features
    are strongly correlated, and this preconditioner makes the problem close to isotropic,
    so it converges in tens of iterations where plain L-BFGS needs hundreds.
    """
    train = torch.ones(x.shape[1], 1, dtype=torch.bool, device=x.device)
    scale = torch.ones(x.shape[0], 1, x.shape[2], dtype=torch.float64, device=x.device)
    n_outputs = y.shape[1] if y.ndim == 2 else int(y.max()) + 1
    return fit_logistic_folds(x, y, train, alpha, scale, n_outputs, tol, max_iter)[:, 0]


def fit_logistic_folds(
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
    [L, F, K, P] float64, for ``x`` [L, N, P] prepared as for :func:`fit_logistic`,
    ``train`` [N, F] row masks and ``scale`` [L, F, P], each fold's factor on the penalty of
    each feature (its standard deviation when the fold standardises on its own rows).
    ``n_classes`` is the number of outputs K: the classes, or an indicator ``y``'s columns.

    All folds share one pass over the features: a held-out row weighs 0 in its fold's mean."""
    n_layers, _, n_features = x.shape
    n_train = train.sum(0).double()  # [F]
    strength = resolved_alpha(alpha) / n_train
    sigmoid = y.ndim == 2
    strength = strength * (2.0 if n_classes == 2 and not sigmoid else 1.0)  # see fit_logistic
    penalty = strength[None, :, None] * scale.square()  # [L, F, P]
    penalty[..., -1] = 0.0  # the intercept
    inverse = ridge_preconditioner(x, penalty.mean(1))
    target = y if sigmoid else torch.nn.functional.one_hot(y, n_classes)
    weight = (train / n_train).to(x.dtype)  # [N, F]: each fold's mean over its own rows
    objective = _Objective(
        x, target.to(x.dtype), weight, penalty.reshape(-1, 1, n_features), inverse, sigmoid
    )
    start = torch.zeros(n_layers * train.shape[1], n_classes, n_features, dtype=torch.float64)
    weights = _lbfgs(objective, start.to(x.device), tol, max_iter)
    return weights.view(n_layers, -1, n_classes, n_features)


def resolved_alpha(alpha: float | None) -> float:
    """The L2 penalty ``alpha`` (1/C), DEFAULT_ALPHA for None; not positive: a ConfigError."""
    if alpha is None:
        return DEFAULT_ALPHA
    if not alpha > 0:
        raise ConfigError(f"alpha must be a positive number; got {alpha}")
    return float(alpha)


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


class _Objective:
    """Penalised mean cross-entropy of every (layer, fold), its gradient and preconditioner.

    ``x`` [L, N, P] features, ``target`` [N, K] one-hot classes under a softmax (or, with
    ``sigmoid``, a 0/1 indicator: independent binary regressions, their cross-entropies
    summed), ``weight`` [N, F] each row's weight in each fold's mean (0 when held out),
    ``penalty`` [L·F, 1, P] per-feature L2 strength, ``inverse`` [L, P, P] ≈ (XᵀX/n +
    diag(penalty))⁻¹, applied as one batched matrix product (much cheaper than triangular
    solves). Weights are [L·F, K, P], class-major, so
    both products with ``x`` read it in its stored order (several times faster on CPU than
    [L, P, K]), and all folds of a layer share one pass over its features.
    """

    def __init__(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        penalty: torch.Tensor,
        inverse: torch.Tensor,
        sigmoid: bool = False,
    ) -> None:
        self.x, self.target, self.weight = x, target, weight
        self.penalty, self.inverse, self.sigmoid = penalty, inverse, sigmoid
        # the L-BFGS's first step: Newton's at W = 0, where the Hessian is XᵀX/n over K
        # (softmax) or over 4 (sigmoid, p(1 - p) = 1/4)
        self.newton_scale = 4.0 if sigmoid else float(target.shape[1])

    def __call__(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [L·F] and gradient [L·F, K, P] (float64) at ``weights`` [L·F, K, P]."""
        n_layers, n, n_features = self.x.shape
        n_folds, n_classes = self.weight.shape[1], self.target.shape[1]
        blocks = weights.view(n_layers, n_folds * n_classes, n_features).to(self.x.dtype)
        logits = (self.x @ blocks.mT).view(n_layers, n, n_folds, n_classes)
        target = self.target[:, None, :]
        if self.sigmoid:  # -log sigmoid(±z) = softplus(z) - y·z
            cells, prob = torch.nn.functional.softplus(logits) - logits * target, logits.sigmoid()
        else:
            log_prob = logits.log_softmax(-1)
            cells, prob = -log_prob * target, log_prob.exp()
        nll = (cells.sum(-1).double() * self.weight).sum(1)  # [L, F]
        loss = nll.flatten() + 0.5 * (self.penalty * weights.square()).sum((1, 2))
        resid = (prob - target) * self.weight[..., None]
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
    scale = torch.full_like(loss, objective.newton_scale)
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
