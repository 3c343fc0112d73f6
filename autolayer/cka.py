"""Linear CKA between layers and models, computed in feature space (no N×N Gram matrices).

CKA (Kornblith et al. 2019) compares two representations of the same N rows. With centred
features X [N, Dx], Y [N, Dy] the biased estimator is ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``.
The debiased estimator replaces each HSIC by the unbiased U-statistic of Song et al. 2012
(Nguyen et al. 2021's "debiased CKA"); on centred features it needs only ``‖XᵀY‖²_F``, the
squared row norms s_i = ‖x_i‖², t_i = ‖y_i‖² and their sums:

    HSIC₁ ∝ ‖XᵀY‖²_F − n/(n−2) sᵀt + (Σs)(Σt) / ((n−1)(n−2))

(the common factor 1/(n(n−3)) cancels in the ratio). The U-statistic does not change when
the features are shifted, so centring first is exact for it too. The cross products are
accumulated over row batches in float64, so a batched result equals the full one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from autolayer.device import resolve_device
from autolayer.errors import ConfigError, DataError

Num = float | np.ndarray | torch.Tensor  # scalars or broadcasting arrays of HSIC terms
CROSS_BYTES = 256 * 2**20  # memory for the float64 cross-covariance accumulators


@dataclass(frozen=True)
class _Terms:
    """Per-layer sufficient statistics of one array for CKA, all float64.

    ``mean`` [L, D] centres the features; ``self_sim`` [L] is the (de)biased HSIC of a layer
    with itself (unnormalised); ``row_sq`` [N, L] and ``row_sq_sum`` [L] are the squared row
    norms of the centred features and their sums (used by the debiased estimator).
    """

    mean: torch.Tensor
    self_sim: torch.Tensor
    row_sq: torch.Tensor
    row_sq_sum: torch.Tensor


def linear_cka(X: np.ndarray, Y: np.ndarray, *, debiased: bool = False) -> float:
    """Linear CKA of two representations X [N, Dx], Y [N, Dy] of the same N rows.

    A plain float64 computation kept separate from ``cka_grid``'s batched one, for single
    pairs such as one chosen layer per model.
    """
    _check_pair(np.shape(X), np.shape(Y), 2, debiased)
    for name, arr in (("X", X), ("Y", Y)):
        if not np.isfinite(arr).all():
            raise DataError(f"{name} has NaN/inf values")
    x = np.asarray(X, dtype=np.float64) - np.mean(X, axis=0, dtype=np.float64)
    y = np.asarray(Y, dtype=np.float64) - np.mean(Y, axis=0, dtype=np.float64)
    s, t = np.square(x).sum(1), np.square(y).sum(1)
    n = len(x)
    cross = _hsic(np.square(x.T @ y).sum(), s @ t, s.sum(), t.sum(), n, debiased)
    self_x = _hsic(np.square(x.T @ x).sum(), s @ s, s.sum(), s.sum(), n, debiased)
    self_y = _hsic(np.square(y.T @ y).sum(), t @ t, t.sum(), t.sum(), n, debiased)
    return float(cross / np.sqrt(self_x * self_y))


def cka_grid(
    A: np.ndarray,
    B: np.ndarray,
    *,
    debiased: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
) -> np.ndarray:
    """CKA of every layer pair: A [N, La, Da], B [N, Lb, Db] → [La, Lb].

    The cross-covariances of a group of A's layers with all of B's layers at once are one
    batched matrix product [g, Da, N] @ [N, Lb·Db], accumulated over row batches of
    ``batch_size`` rows (all rows when None) so that N need not fit in memory. Float64
    inputs are multiplied in float64, others in float32 (centring first keeps that
    accurate); every sum is accumulated in float64.
    """
    _check_pair(np.shape(A), np.shape(B), 3, debiased)
    dev = resolve_device(device)
    step = len(A) if batch_size is None else batch_size
    terms_a = _layer_terms(A, "A", step, dev, debiased)
    terms_b = _layer_terms(B, "B", step, dev, debiased)
    cross = _cross_sq(A, B, terms_a.mean, terms_b.mean, step, dev)  # [La, Lb]
    s_dot_t = terms_a.row_sq.T @ terms_b.row_sq
    sims = _hsic(cross, s_dot_t, terms_a.row_sq_sum[:, None], terms_b.row_sq_sum, len(A), debiased)
    grid = sims / torch.sqrt(terms_a.self_sim[:, None] * terms_b.self_sim)
    return grid.cpu().numpy()


def cka_matrix(embs: dict[str, np.ndarray], *, debiased: bool = False) -> np.ndarray:
    """CKA between models, one chosen layer each: ``embs`` name → [N, D_name] → [M, M].

    Rows and columns follow the dict's order; widths may differ between models.
    """
    names = list(embs)
    shapes = {name: np.shape(arr) for name, arr in embs.items()}
    if len({shape[0] for shape in shapes.values()}) > 1:
        raise DataError(f"CKA needs the same rows in every model; got shapes {shapes}")
    for name in names:
        if not np.isfinite(embs[name]).all():
            raise DataError(f"embeddings of {name!r} have NaN/inf values")
    out = np.eye(len(names))
    for i, j in zip(*np.triu_indices(len(names), k=1), strict=True):
        out[i, j] = out[j, i] = linear_cka(embs[names[i]], embs[names[j]], debiased=debiased)
    return out


def _hsic(cross_sq: Num, s_dot_t: Num, s_sum: Num, t_sum: Num, n: int, debiased: bool) -> Num:
    """HSIC up to a factor common to numerator and denominator of CKA.

    Arguments are ‖XᵀY‖²_F, sᵀt, Σs, Σt of centred features (arrays broadcast); biased HSIC
    is just ‖XᵀY‖²_F, debiased HSIC is the U-statistic in the module docstring.
    """
    if not debiased:
        return cross_sq
    return cross_sq - n / (n - 2) * s_dot_t + s_sum * t_sum / ((n - 1) * (n - 2))


def _cross_sq(
    A: np.ndarray,
    B: np.ndarray,
    mean_a: torch.Tensor,
    mean_b: torch.Tensor,
    step: int,
    dev: torch.device,
) -> torch.Tensor:
    """‖A_aᵀ B_b‖²_F of centred layers for every pair → [La, Lb] float64.

    A's layers go in groups whose float64 accumulators [g, Da, Lb·Db] fit CROSS_BYTES, so
    each row batch of B is centred once per group rather than once per layer.
    """
    n_layers_b, width_b = B.shape[1], B.shape[2]
    group = max(1, CROSS_BYTES // (A.shape[2] * n_layers_b * width_b * 8))
    out = []
    for first in range(0, A.shape[1], group):
        layers = slice(first, first + group)
        shape = (min(group, A.shape[1] - first), A.shape[2], n_layers_b * width_b)
        cross = torch.zeros(shape, dtype=torch.float64, device=dev)
        for rows in _row_batches(len(A), step):
            y = _centred(B[rows], mean_b, dev).flatten(1)  # [n, Lb·Db]
            x = _centred(A[rows, layers], mean_a[layers], dev)  # [n, g, Da]
            cross += x.permute(1, 2, 0) @ y
        out.append(cross.unflatten(2, (n_layers_b, width_b)).square().sum((1, 3)))
    return torch.cat(out)


def _layer_terms(X: np.ndarray, name: str, step: int, dev: torch.device, debiased: bool) -> _Terms:
    """Means, self-similarities and squared row norms of each layer of X [N, L, D]."""
    mean = _layer_means(X, name, step, dev)
    gram = torch.zeros(X.shape[1], X.shape[2], X.shape[2], dtype=torch.float64, device=dev)
    row_sq = []
    for rows in _row_batches(len(X), step):
        x = _centred(X[rows], mean, dev).transpose(0, 1)  # [L, n, D]
        gram += x.transpose(1, 2) @ x
        row_sq.append(x.square().sum(2).T.double())
    row_sq = torch.cat(row_sq)  # [N, L]
    row_sq_sum = row_sq.sum(0)
    self_sim = _hsic(
        gram.square().sum((1, 2)), row_sq.square().sum(0), row_sq_sum, row_sq_sum, len(X), debiased
    )
    return _Terms(mean=mean, self_sim=self_sim, row_sq=row_sq, row_sq_sum=row_sq_sum)


def _layer_means(X: np.ndarray, name: str, step: int, dev: torch.device) -> torch.Tensor:
    """Column means [L, D] in float64; a non-finite sum means NaN/inf in that layer."""
    total = torch.zeros(X.shape[1], X.shape[2], dtype=torch.float64, device=dev)
    for rows in _row_batches(len(X), step):
        total += _tensor(X[rows]).to(dev).sum(0, dtype=torch.float64)
    bad = torch.nonzero(~total.isfinite().all(1)).flatten().tolist()
    if bad:
        raise DataError(f"{name} has NaN/inf in layer(s) {bad}")
    return total / len(X)


def _centred(x: np.ndarray, mean: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Rows of x [n, ...] minus the float64 column means [...], in the compute dtype: float64
    for float64 input, else float32 (rounding the mean costs less than the input's own
    float32 rounding)."""
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    return _tensor(x).to(dev, dtype) - mean.to(dtype)


def _tensor(x: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``x``; read-only arrays (memory-mapped caches) are copied first, since
    torch tensors assume writable memory."""
    return torch.from_numpy(x if x.flags.writeable else np.array(x))


def _row_batches(n: int, step: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``step`` rows covering range(n)."""
    if step < 1:
        raise ConfigError(f"batch_size must be a positive number of rows; got {step}")
    return (slice(start, start + step) for start in range(0, n, step))


def _check_pair(shape_x: tuple, shape_y: tuple, ndim: int, debiased: bool) -> None:
    """Both inputs ``ndim``-D with the same number of rows (enough for the estimator)."""
    for shape in (shape_x, shape_y):
        if len(shape) != ndim:
            layout = "[N, D]" if ndim == 2 else "[N, L, D]"
            raise DataError(f"CKA inputs must be {ndim}-D {layout}; got shape {shape}")
    if shape_x[0] != shape_y[0]:
        raise DataError(
            f"CKA needs the same rows in both inputs; got {shape_x[0]} and {shape_y[0]} rows"
        )
    least = 4 if debiased else 2
    if shape_x[0] < least:
        raise DataError(f"CKA needs at least {least} rows here; got {shape_x[0]}")
