"""Projection + fusion operators + MLP head over frozen embeddings, after Gwak & Jung (2025).

"Layer-Aware Embedding Fusion for LLMs in Text Classifications" (arXiv 2504.05764): each
model's chosen-layer embedding ``[N, D_i]`` is standardised, projected to a common width ``d``
by Linear+ReLU, the ``m`` projections are fused by one operator, and an MLP classifies the
fused vector. Operators live in a name -> class registry (like Optuna's samplers) so the search
can enumerate them, and each states its output size and parameter count as class methods so
the search can price a configuration before building anything.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.sparse import csr_matrix, issparse, spmatrix
from torch import Tensor, nn
from torch.nn import functional as F

from autolayer.device import resolve_device
from autolayer.errors import CacheError, ConfigError, DivergedError
from autolayer.files import atomic_write
from autolayer.metrics import METRICS
from autolayer.metrics import score as metric_score

__all__ = [
    "METRICS",
    "OPERATORS",
    "CrossValidation",
    "FusionClassifier",
    "FusionOperator",
    "FusionParams",
    "HEADS",
    "TrainResult",
    "count_parameters",
    "cross_validate",
    "fused_dim",
    "load_classifier",
    "make_operator",
    "predict_proba",
    "register",
    "save_classifier",
    "train_fusion",
]

HEADS = ("mlp", "linear")  # the paper's projections + operator + MLP, or logistic regression
WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = "head.json"
_EVAL_BATCH = 4096


# --------------------------------------------------------------------------- operators


class FusionOperator(nn.Module):
    """Fuse ``m`` projected embeddings, each ``[B, d]``, into one ``[B, out_dim(m, d)]``.

    Subclasses give the formula in their docstring and override ``out_dim`` (when it is not
    ``d``), ``n_parameters`` (when they learn something) and ``validate`` (when some ``m`` or
    ``d`` is impossible). With ``m = 1`` every operator is the identity, so a single-model
    configuration is valid under any operator name.
    """

    name: ClassVar[str]

    def __init__(self, n_inputs: int, width: int) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.width = width

    @classmethod
    def out_dim(cls, n_inputs: int, width: int) -> int:
        """Width of the fused vector; most operators keep ``d``."""
        return width

    @classmethod
    def n_parameters(cls, n_inputs: int, width: int) -> int:
        """Learned scalars of the operator itself (projections and head not included)."""
        return 0

    @classmethod
    def validate(cls, n_inputs: int, width: int) -> None:
        """Raise ConfigError if this operator cannot fuse ``n_inputs`` vectors of ``width``."""

    def forward(self, hs: list[Tensor]) -> Tensor:
        """``m`` tensors ``[B, d]`` -> ``[B, out_dim(m, d)]``."""
        raise NotImplementedError


OPERATORS: dict[str, type[FusionOperator]] = {}
_Op = TypeVar("_Op", bound=type[FusionOperator])


def register(name: str) -> Callable[[_Op], _Op]:
    """Class decorator adding a FusionOperator to OPERATORS under ``name``."""

    def decorator(cls: _Op) -> _Op:
        if name in OPERATORS:
            raise ConfigError(f"operator {name!r} is already registered by {OPERATORS[name]}")
        cls.name = name
        OPERATORS[name] = cls
        return cls

    return decorator


def _operator_class(name: str) -> type[FusionOperator]:
    if name not in OPERATORS:
        raise ConfigError(f"operator must be one of {sorted(OPERATORS)}, got {name!r}")
    return OPERATORS[name]


def _check_shape(operator: str, n_inputs: int, width: int) -> type[FusionOperator]:
    """Resolve ``operator`` and reject impossible ``(n_inputs, width)`` before any building."""
    cls = _operator_class(operator)
    if n_inputs < 1:
        raise ConfigError(f"n_inputs must be >= 1, got {n_inputs}")
    if width < 1:
        raise ConfigError(f"width must be >= 1, got {width}")
    cls.validate(n_inputs, width)
    return cls


def make_operator(name: str, n_inputs: int, width: int) -> FusionOperator:
    """Build the registered operator ``name`` for ``n_inputs`` vectors of ``width``."""
    return _check_shape(name, n_inputs, width)(n_inputs, width)


def fused_dim(n_inputs: int, width: int, operator: str) -> int:
    """Width of the fused vector the head receives, without building anything."""
    return _check_shape(operator, n_inputs, width).out_dim(n_inputs, width)


@register("concat")
class Concat(FusionOperator):
    """``z = [h_1; ...; h_m]`` -> ``[B, m*d]``; keeps every model's features apart."""

    @classmethod
    def out_dim(cls, n_inputs: int, width: int) -> int:
        return n_inputs * width

    def forward(self, hs: list[Tensor]) -> Tensor:
        return torch.cat(hs, dim=-1)


@register("sum")
class Sum(FusionOperator):
    """``z = sum_i h_i`` -> ``[B, d]``; an additive, order-free mix."""

    def forward(self, hs: list[Tensor]) -> Tensor:
        return torch.stack(hs).sum(dim=0)


@register("hadamard")
class Hadamard(FusionOperator):
    """``z = h_1 * ... * h_m`` (element-wise) -> ``[B, d]``; unit k fires only if all agree."""

    def forward(self, hs: list[Tensor]) -> Tensor:
        return torch.stack(hs).prod(dim=0)


@register("multiplication")
class Multiplication(FusionOperator):
    """Learned low-rank bilinear interaction (MLB, Kim et al. 2017), folded left -> ``[B, d]``.

    ``z_1 = h_1``; ``z_k = (U_k z_{k-1} + a_k) * (V_k h_k + b_k)`` for ``k = 2..m``; ``z = z_m``.
    ``hadamard`` only multiplies unit j of one model by unit j of the other; here unit j is the
    learned bilinear form ``x^T u_j v_j^T y`` of the whole vectors (plus the linear terms
    ``b_j u_j.x + a_j v_j.y`` the biases add). The Linear that follows (the next ``U`` or the
    head's first layer) mixes these rank-1 forms, which is MLB's ``P((U x) * (V y))`` with
    ``P`` absorbed, so ``P`` is not built. Input order matters; ``m = 1`` is the identity.
    """

    def __init__(self, n_inputs: int, width: int) -> None:
        super().__init__(n_inputs, width)
        self.left = nn.ModuleList(nn.Linear(width, width) for _ in range(n_inputs - 1))
        self.right = nn.ModuleList(nn.Linear(width, width) for _ in range(n_inputs - 1))

    @classmethod
    def n_parameters(cls, n_inputs: int, width: int) -> int:
        return (n_inputs - 1) * 2 * (width * width + width)

    def forward(self, hs: list[Tensor]) -> Tensor:
        z = hs[0]
        for u, v, h in zip(self.left, self.right, hs[1:], strict=True):
            z = u(z) * v(h)
        return z


def _hamilton(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product of ``[B, d]`` tensors read as ``d/4`` quaternions ``(r, i, j, k)``."""
    a1, b1, c1, d1 = p.chunk(4, dim=-1)
    a2, b2, c2, d2 = q.chunk(4, dim=-1)
    return torch.cat(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        dim=-1,
    )


@register("quaternion")
class Quaternion(FusionOperator):
    """Hamilton product, folded left: ``z = ((h_1 x h_2) x h_3) ...`` -> ``[B, d]``.

    Each ``h_i`` is split into four blocks ``(r, i, j, k)`` of ``d/4`` units, read as ``d/4``
    quaternions, and multiplied per quaternion:
    ``(a1 a2 - b1 b2 - c1 c2 - d1 d2, a1 b2 + b1 a2 + c1 d2 - d1 c2,
    a1 c2 - b1 d2 + c1 a2 + d1 b2, a1 d2 + b1 c2 - c1 b2 + d1 a2)``.
    Every output unit mixes all four blocks of both inputs, with signs, unlike ``hadamard``.
    Needs ``d % 4 == 0``; the product is not commutative, so input order matters;
    ``m = 1`` is the identity.
    """

    @classmethod
    def validate(cls, n_inputs: int, width: int) -> None:
        if width % 4:
            raise ConfigError(
                f"width must be divisible by 4 for operator 'quaternion', got {width}"
            )

    def forward(self, hs: list[Tensor]) -> Tensor:
        z = hs[0]
        for h in hs[1:]:
            z = _hamilton(z, h)
        return z


@register("moe")
class MixtureOfExperts(FusionOperator):
    """Soft gate over models: ``g = softmax(W [h_1; ...; h_m] + b)`` in R^m, ``z = sum_i g_i h_i``.

    Output ``[B, d]``; the gate lets each example lean on the model that suits it. With
    ``m = 1`` the gate is identically 1, so no gate is built and the operator is the identity.
    """

    def __init__(self, n_inputs: int, width: int) -> None:
        super().__init__(n_inputs, width)
        self.gate = nn.Linear(n_inputs * width, n_inputs) if n_inputs > 1 else None

    @classmethod
    def n_parameters(cls, n_inputs: int, width: int) -> int:
        return 0 if n_inputs == 1 else n_inputs * width * n_inputs + n_inputs

    def forward(self, hs: list[Tensor]) -> Tensor:
        if self.gate is None:
            return hs[0]
        g = torch.softmax(self.gate(torch.cat(hs, dim=-1)), dim=-1)  # [B, m]
        return torch.einsum("bm,mbd->bd", g, torch.stack(hs))


@register("residual_hadamard")
class ResidualHadamard(FusionOperator):
    """``z = h_1 * ... * h_m + sum_i h_i`` -> ``[B, d]``: interactions plus an additive path.

    The sum keeps gradients and signal flowing where the product is zero (ReLU units that are
    off in one model). With ``m = 1`` it is the identity ``z = h_1`` rather than ``2 h_1``: one
    term has no interaction to add a residual to.
    """

    def forward(self, hs: list[Tensor]) -> Tensor:
        if len(hs) == 1:
            return hs[0]
        stacked = torch.stack(hs)
        return stacked.prod(dim=0) + stacked.sum(dim=0)


# --------------------------------------------------------------------------- classifier


class _Standardised(nn.Module):
    """Standardise ``[B, D]`` with frozen training statistics, nothing learned: the input
    of the linear head, which is logistic regression on the concatenated features."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _Projection(_Standardised):
    """Standardise ``[B, D]`` with frozen training statistics, then Linear+ReLU to ``[B, d]``.

    The statistics are buffers, not parameters: decoder embeddings have a few huge, uneven
    dimensions ("massive activations") that would otherwise dominate the projection.
    """

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__(in_dim)
        self.linear = nn.Linear(in_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear(super().forward(x)))


class SparseBatch(NamedTuple):
    """Rows of a sparse matrix as ``nn.EmbeddingBag`` takes them: column indices, where each
    row starts, and the values as per-sample weights."""

    indices: Tensor
    offsets: Tensor
    weights: Tensor


class SparseRows:
    """A CSR matrix ``[N, V]`` (TF-IDF) served batch by batch as :class:`SparseBatch`:
    indexing by a row tensor or a slice gives one batch, on ``device``."""

    def __init__(self, matrix: spmatrix, device: torch.device) -> None:
        self.matrix = csr_matrix(matrix, dtype=np.float32)
        self.device = device

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def __getitem__(self, index: Tensor | slice) -> SparseBatch:
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        rows = self.matrix[index]
        return SparseBatch(
            torch.as_tensor(rows.indices, dtype=torch.long, device=self.device),
            torch.as_tensor(rows.indptr[:-1], dtype=torch.long, device=self.device),
            torch.as_tensor(rows.data, dtype=torch.float32, device=self.device),
        )


class _SparseProjection(nn.Module):
    """Sparse ``[B, V]`` × dense ``[V, d]`` + bias, then ReLU: the Linear+ReLU projection of
    a sparse input (TF-IDF). No standardisation: centring would make the rows dense, and
    TF-IDF rows are already normalised.

    A batch touches a few thousand of the ``V`` rows, so only those are gathered, computed
    on and updated: the table is a buffer, the gathered rows are the leaf autograd sees,
    and :class:`_RowAdam` updates them in the table (autograd on the whole table costs time
    in proportion to ``V`` × ``d`` at every step, ``nn.EmbeddingBag``'s sparse gradients in
    proportion to the batch's non-zeros × ``d``).
    """

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's initialisation
        self.register_buffer("weight", torch.empty(in_dim, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.touched: tuple[Tensor, Tensor] | None = None  # (rows, their gathered weights)

    def forward(self, x: SparseBatch) -> Tensor:
        unique, inverse = torch.unique(x.indices, return_inverse=True)
        rows = self.weight.index_select(0, unique)
        if self.training and torch.is_grad_enabled():
            self.touched = (unique, rows.requires_grad_())
        out = F.embedding_bag(inverse, rows, x.offsets, mode="sum", per_sample_weights=x.weights)
        return F.relu(out + self.bias)


class _RowAdam:
    """Adam on the table rows the last batch touched (lazy, like ``torch.optim.SparseAdam``:
    an untouched row keeps its moments), for every sparse projection of a model."""

    def __init__(self, projections: Sequence[_SparseProjection], lr: float) -> None:
        self.lr, self.betas, self.eps, self.steps = lr, (0.9, 0.999), 1e-8, 0
        self.state = [
            (p, torch.zeros_like(p.weight), torch.zeros_like(p.weight)) for p in projections
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: every forward pass gathers fresh rows."""

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        size = self.lr * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        for projection, first, second in self.state:
            if projection.touched is None or projection.touched[1].grad is None:
                continue
            index, rows = projection.touched
            grad = rows.grad
            m = first.index_select(0, index).mul_(b1).add_(grad, alpha=1 - b1)
            v = second.index_select(0, index).mul_(b2).addcmul_(grad, grad, value=1 - b2)
            first.index_copy_(0, index, m)
            second.index_copy_(0, index, v)
            projection.weight.index_copy_(0, index, rows - size * m / (v.sqrt() + self.eps))
            projection.touched = None


class FusionClassifier(nn.Module):
    """Per-model standardise -> Linear(D_i, d)+ReLU -> operator -> MLP head -> logits ``[B, C]``.

    The head is ``Linear(out_dim, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, C)``. With
    ``head="linear"`` there is no projection, operator or MLP: one ``Linear(ΣD_i, C)`` on the
    standardised, concatenated features (logistic regression; dense features only). The
    constructor takes only plain values, returned by ``config()``, so ``head.json`` can rebuild
    the module before ``head.safetensors`` fills it.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        width: int,
        operator: str,
        hidden: int,
        dropout: float,
        n_classes: int,
        sparse: Sequence[bool] | None = None,
        head: str = "mlp",
    ) -> None:
        super().__init__()
        _check_head(input_dims, hidden, dropout, n_classes)
        self.input_dims = [int(dim) for dim in input_dims]
        self.sparse = [bool(s) for s in (sparse or [False] * len(self.input_dims))]
        self.width = width
        self.operator = operator
        self.hidden = hidden
        self.dropout = dropout
        self.n_classes = n_classes
        self.kind = _check_kind(head, self.sparse)
        if self.kind == "linear":
            self.projections = nn.ModuleList(_Standardised(dim) for dim in self.input_dims)
            self.head = nn.Linear(sum(self.input_dims), n_classes)
            return
        self.projections = nn.ModuleList(
            (_SparseProjection if is_sparse else _Projection)(dim, width)
            for dim, is_sparse in zip(self.input_dims, self.sparse, strict=True)
        )
        self.fusion = make_operator(operator, len(self.input_dims), width)
        self.head = nn.Sequential(
            nn.Linear(self.fusion.out_dim(len(self.input_dims), width), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def config(self) -> dict:
        """Constructor arguments as JSON-ready values."""
        return {
            "input_dims": list(self.input_dims),
            "width": self.width,
            "operator": self.operator,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "n_classes": self.n_classes,
            "sparse": list(self.sparse),
            "head": self.kind,
        }

    @torch.no_grad()
    def set_standardisation(self, inputs: Sequence[np.ndarray]) -> None:
        """Store per-feature mean and std of each training array ``[N, D_i]`` as buffers.

        Features whose std is below 1e-6 (constant in training) are only centred, not divided.
        A non-finite feature (nan or inf) is refused here: it would make every loss NaN, which
        looks like a diverged head.
        """
        _check_inputs(self.input_dims, inputs, "inputs")
        for i, (projection, array) in enumerate(zip(self.projections, inputs, strict=True)):
            if isinstance(projection, _SparseProjection):
                continue
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: refused below
                mean, std = _column_stats(array)
            if not (np.isfinite(mean).all() and np.isfinite(std).all()):
                raise CacheError(
                    f"the training features of input {i} are not finite (nan or inf); "
                    "the embeddings are damaged: clear their cache entry and extract again"
                )
            projection.mean.copy_(torch.from_numpy(mean))
            projection.std.copy_(torch.from_numpy(np.where(std < 1e-6, 1.0, std)))

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Logits ``[B, C]`` from one ``[B, D_i]`` tensor per model, in ``input_dims`` order."""
        hs = [projection(x) for projection, x in zip(self.projections, inputs, strict=True)]
        if self.kind == "linear":
            return self.head(torch.cat(hs, dim=1))
        return self.head(self.fusion(hs))


def _column_stats(array: np.ndarray, rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std ``[D]`` of ``[N, D]``.

    Float64, because decoder activations reach 1e4, but by row chunks, so no float64 copy of
    the whole array is made.
    """
    mean = np.mean(array, axis=0, dtype=np.float64)
    squares = sum(
        np.square(array[i : i + rows] - mean).sum(axis=0) for i in range(0, len(array), rows)
    )
    return mean, np.sqrt(squares / len(array))


def _check_head(input_dims: Sequence[int], hidden: int, dropout: float, n_classes: int) -> None:
    if len(input_dims) == 0 or any(int(dim) < 1 for dim in input_dims):
        raise ConfigError(f"input_dims must be a non-empty list of ints >= 1, got {input_dims}")
    if hidden < 1:
        raise ConfigError(f"hidden must be >= 1, got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")


def _check_kind(head: str, sparse: Sequence[bool]) -> str:
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if head == "linear" and any(sparse):
        raise ConfigError("the linear head takes dense features only; a sparse source needs 'mlp'")
    return head


def count_parameters(
    input_dims: Sequence[int],
    width: int,
    operator: str,
    hidden: int,
    n_classes: int,
    head: str = "mlp",
) -> int:
    """Learned scalars of a FusionClassifier, computed without building it (buffers excluded)."""
    if head == "linear":
        return (sum(input_dims) + 1) * n_classes
    m = len(input_dims)
    cls = _check_shape(operator, m, width)
    projections = sum(dim * width + width for dim in input_dims)
    head = cls.out_dim(m, width) * hidden + hidden + hidden * n_classes + n_classes
    return projections + cls.n_parameters(m, width) + head


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class FusionParams:
    """Hyper-parameters of one fusion head; defaults follow the paper where it gives them.

    ``lr``, ``batch_size``, ``max_epochs`` and ``width`` are the paper's; ``hidden``,
    ``dropout`` and ``patience`` are ours. Early stopping watches ``metric`` on validation.
    """

    operator: str
    width: int = 1024
    hidden: int = 256
    dropout: float = 0.1
    lr: float = 1e-4
    batch_size: int = 100
    max_epochs: int = 120
    patience: int = 10
    weight_decay: float = 0.0
    metric: str = "accuracy"
    head: str = "mlp"  # or "linear": logistic regression, fitted to convergence

    def __post_init__(self) -> None:
        _check_kind(self.head, ())
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        for name in ("hidden", "batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head == "linear":
            return  # the rest shapes the MLP: width, operator, rate, decay
        _check_shape(self.operator, 1, self.width)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train_fusion``; ``best_epoch`` indexes ``history`` (0-based)."""

    model: FusionClassifier
    best_epoch: int
    best_val_metric: float
    history: tuple[float, ...]
    train_seconds: float
    n_parameters: int


def train_fusion(
    train: list[np.ndarray],
    y_train: np.ndarray,
    val: list[np.ndarray] | None,
    y_val: np.ndarray | None,
    *,
    params: FusionParams,
    seed: int = 0,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, float], bool] | None = None,
    n_classes: int | None = None,
) -> TrainResult:
    """Train a FusionClassifier on ``train`` (one ``[N, D_i]`` per model), select on ``val``.

    AdamW on cross-entropy, shuffled mini-batches, early stopping after ``params.patience``
    epochs without a strictly better validation metric; the best weights are restored.
    ``on_epoch(epoch, val_metric)`` runs after every epoch and stops training by returning True
    (an Optuna pruning hook: the caller raises TrialPruned). Labels are ints ``0..C-1``.
    The global RNG is forked, so seeding here leaves the caller's random state untouched;
    on CPU the same inputs and seed give identical results.
    """
    input_dims = _input_dims(train)
    y_train_t = _labels(y_train, np.shape(train[0])[0], "y_train")
    restore_best = val is not None
    if val is None:
        # No validation data (the final fit on train + validation): train exactly
        # ``max_epochs`` epochs and keep the last weights; the history is training accuracy.
        val, y_val_t, params = train, y_train_t, replace(params, patience=params.max_epochs)
    else:
        _check_inputs(input_dims, val, "val")
        y_val_t = _labels(y_val, np.shape(val[0])[0], "y_val")
    if n_classes is None:
        n_classes = max(2, int(max(y_train_t.max(), y_val_t.max())) + 1)
    device = resolve_device(device)
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    start = time.perf_counter()
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        model = FusionClassifier(
            input_dims,
            params.width,
            params.operator,
            params.hidden,
            params.dropout,
            n_classes,
            sparse=[issparse(array) for array in train],
            head=params.head,
        )
        model.set_standardisation(train)
        model.to(device)
        data = (
            [_tensor(array, device) for array in train],
            y_train_t.to(device),
            [_tensor(array, device) for array in val],
            y_val_t.to(device),
        )
        if params.head == "linear":
            best_epoch, history = 0, (_fit_linear(model, *data, params.metric),)
        else:
            generator = torch.Generator().manual_seed(seed)
            best_epoch, history = _fit(model, *data, params, generator, on_epoch, restore_best)
    model.cpu().eval()
    broken = _non_finite(model)
    if broken:
        raise DivergedError(
            f"the fusion head diverged ({broken} is not finite after training); "
            f"lower lr (it is {params.lr:g})"
        )
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_metric=history[best_epoch],
        history=history,
        train_seconds=time.perf_counter() - start,
        n_parameters=sum(p.numel() for p in model.parameters())
        + sum(m.weight.numel() for m in model.projections if isinstance(m, _SparseProjection)),
    )


@dataclass(frozen=True)
class CrossValidation:
    """Outcome of ``cross_validate``: the held-out score, and the epochs to train for."""

    best_epoch: int  # argmax of ``curve``: how long the final head trains on every row
    best_val_metric: float  # each fold scored at the epoch the other folds chose
    curve: tuple[float, ...]  # mean over folds of the held-out metric after each epoch
    train_seconds: float
    fold_scores: tuple[float, ...] = ()  # each fold's score (their mean is best_val_metric)


def cross_validate(
    train: list[np.ndarray],
    y: np.ndarray,
    folds: Sequence[np.ndarray],
    *,
    params: FusionParams,
    seed: int = 0,
    device: str | torch.device | None = None,
    n_classes: int | None = None,
) -> CrossValidation:
    """Judge one head by k-fold cross-validation over ``train`` (few labels, no split to
    spare): one head per fold, each trained ``params.max_epochs`` epochs with its fold held
    out. The number of epochs is a hyper-parameter, chosen for fold i on the mean curve of
    the *other* folds, and fold i is scored there: taking the best epoch of the mean curve
    of all folds would score every fold at a maximum over 60 noisy epochs, which on a few
    dozen rows flatters an epoch-trained head over one without epochs (the linear head).
    """
    full = replace(params, patience=params.max_epochs)
    n_classes = n_classes or max(2, int(np.max(y)) + 1)
    every = np.arange(len(y))
    curves, seconds = [], 0.0
    for held in folds:
        keep = np.setdiff1d(every, held)
        result = train_fusion(
            [x[keep] for x in train],
            y[keep],
            [x[held] for x in train],
            y[held],
            params=full,
            seed=seed,
            device=device,
            n_classes=n_classes,
        )
        curves.append(result.history)
        seconds += result.train_seconds
    runs = np.asarray(curves, dtype=np.float64)  # [folds, epochs]
    total = runs.sum(axis=0)
    others = (total - runs) / max(len(runs) - 1, 1)  # each fold's view of the rest
    scores = runs[np.arange(len(runs)), np.argmax(others, axis=1)]
    curve = total / len(runs)
    return CrossValidation(
        int(np.argmax(curve)),
        float(scores.mean()),
        tuple(curve.tolist()),
        seconds,
        tuple(scores.tolist()),
    )


def _fit_linear(
    model: FusionClassifier,
    train: list[Tensor],
    y_train: Tensor,
    val: list[Tensor],
    y_val: Tensor,
    metric: str,
) -> float:
    """Fit the linear head to convergence (the probe's solver: sklearn's logistic regression,
    its L2 penalty chosen by CV on the training rows: :func:`autolayer.probe.chosen_alpha`)
    on the standardised, concatenated features; returns the validation metric. On a few
    labels per class it beats the MLP head on the same features, which early stopping on a
    handful of rows cannot regularise (``studies/fewshot``)."""
    from autolayer.probe import chosen_alpha, fit_logistic

    with torch.no_grad():
        x = torch.cat([p(t) for p, t in zip(model.projections, train, strict=True)], dim=1)
        alpha = chosen_alpha(x.cpu().numpy(), y_train.cpu().numpy(), metric, device=x.device)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        # tol: a probe ranking layers can stop early; a head that predicts cannot
        weights = fit_logistic(x[None], y_train, alpha, tol=1e-6)[0]  # [K', D+1]
        k = weights.shape[0]  # K' < C when the top classes are missing from training
        model.head.weight.zero_()
        model.head.bias.fill_(-30.0)  # a class never seen never wins
        model.head.weight[:k] = weights[:, :-1].to(model.head.weight.dtype)
        model.head.bias[:k] = weights[:, -1].to(model.head.bias.dtype)
    return metric_score(_predict(model, val), y_val, metric)


def _fit(
    model: FusionClassifier,
    train: list[Tensor],
    y_train: Tensor,
    val: list[Tensor],
    y_val: Tensor,
    params: FusionParams,
    generator: torch.Generator,
    on_epoch: Callable[[int, float], bool] | None,
    restore_best: bool = True,
) -> tuple[int, tuple[float, ...]]:
    """Epoch loop; leaves the best state in ``model``. Returns (best epoch, val history)."""
    optimizers = _optimizers(model, params)
    history: list[float] = []
    best_epoch, best_state = 0, None
    for epoch in range(params.max_epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator).to(y_train.device)
        total = torch.zeros((), device=y_train.device)  # summed on device: no sync per batch
        for batch in order.split(params.batch_size):
            loss = F.cross_entropy(model([x[batch] for x in train]), y_train[batch])
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total += loss.detach()
        if not torch.isfinite(total):
            raise DivergedError(
                f"the fusion head diverged (its training loss is {total.item()} in epoch "
                f"{epoch + 1}); lower lr (it is {params.lr:g})"
            )
        score = metric_score(_predict(model, val), y_val, params.metric)
        history.append(score)
        if best_state is None or score > history[best_epoch]:
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None and on_epoch(epoch, score):
            break
        if epoch - best_epoch >= params.patience:
            break
    if restore_best:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
    return best_epoch, tuple(history)


def _optimizers(model: FusionClassifier, params: FusionParams) -> list:
    """AdamW, and for sparse projections' tables (a TF-IDF vocabulary is tens of thousands
    of rows) Adam on the rows each batch touches."""
    out = [torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)]
    tables = [m for m in model.projections if isinstance(m, _SparseProjection)]
    if tables:
        out.append(_RowAdam(tables, params.lr))
    return out


def _predict(model: FusionClassifier, inputs: list[Tensor]) -> Tensor:
    """Predicted class ``[N]``."""
    return _logits(model, inputs, _EVAL_BATCH).argmax(dim=-1)


def _logits(model: FusionClassifier, inputs: list[Tensor], batch_size: int) -> Tensor:
    """Logits ``[N, C]`` in eval mode, in large batches, without autograd bookkeeping."""
    model.eval()
    with torch.inference_mode():
        n = len(inputs[0])
        return torch.cat(
            [model([x[i : i + batch_size] for x in inputs]) for i in range(0, n, batch_size)]
        )


def _tensor(array: np.ndarray, device: torch.device) -> Tensor | SparseRows:
    """A float32 tensor; read-only inputs (memory-mapped cache arrays) are copied first.
    A sparse matrix stays sparse: its rows become batches (see :class:`SparseRows`)."""
    if issparse(array):
        return SparseRows(array, device)
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array, device=device)


def _labels(y: np.ndarray, n: int, name: str) -> Tensor:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ConfigError(
            f"{name} must be non-negative int labels of shape ({n},), "
            f"got dtype {y.dtype} shape {y.shape}"
        )
    return torch.tensor(y, dtype=torch.long)  # a copy: a split's labels are read-only


def _input_dims(train: Sequence[np.ndarray]) -> list[int]:
    """``D_i`` of each training array, after checking they are 2-D with one non-zero N."""
    shapes = [tuple(np.shape(array)) for array in train]
    if not shapes or any(len(shape) != 2 for shape in shapes):
        raise ConfigError(
            f"train must be a non-empty list of 2-D arrays [N, D_i], got shapes {shapes}"
        )
    dims = [shape[1] for shape in shapes]
    _check_inputs(dims, train, "train")
    return dims


def _check_inputs(input_dims: Sequence[int], inputs: Sequence[np.ndarray], name: str) -> None:
    """One ``[N, D_i]`` array per model, same N, ``D_i`` as expected."""
    dims = [tuple(np.shape(array)) for array in inputs]
    n_rows = {shape[0] for shape in dims if len(shape) == 2}
    expected = [(dim,) for dim in input_dims]
    if [shape[1:] for shape in dims] != expected or len(n_rows) != 1 or 0 in n_rows:
        raise ConfigError(
            f"{name} must be {len(input_dims)} non-empty arrays [N, D_i] with D = "
            f"{list(input_dims)} and one N, got shapes {dims}"
        )


def _non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding nan or inf (None: all finite)."""
    return next((k for k, v in model.state_dict().items() if not torch.isfinite(v).all()), None)


# --------------------------------------------------------------------------- inference and I/O


def predict_proba(
    model: FusionClassifier, inputs: list[np.ndarray], batch_size: int = _EVAL_BATCH
) -> np.ndarray:
    """Class probabilities ``[N, C]`` (float32) for one ``[N, D_i]`` array per model."""
    _check_inputs(model.input_dims, inputs, "inputs")
    given = [issparse(array) for array in inputs]
    if given != model.sparse:
        raise ConfigError(
            f"inputs must be sparse where the head was trained on sparse features: "
            f"expected {model.sparse}, got {given}"
        )
    device = next(model.parameters()).device
    logits = _logits(model, [_tensor(array, device) for array in inputs], batch_size)
    proba = torch.softmax(logits, dim=-1).cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
    if len(bad):
        raise _non_finite_output(model, inputs, bad, len(proba))
    return proba


def _non_finite_output(
    model: FusionClassifier, inputs: list[np.ndarray], bad: np.ndarray, n_rows: int
) -> CacheError | DivergedError:
    """Why the head's output is not finite for rows ``bad``: damaged features or weights
    (a cache entry, a saved head: exit 4), or else a head whose finite weights overflow on
    finite features, which only training again with a lower lr cures (as a diverged head)."""
    where = f"for {len(bad)} of {n_rows} rows (first: row {bad[0]})"
    parts = (array[bad] for array in inputs)
    if not all(np.isfinite(part.data if issparse(part) else part).all() for part in parts):
        return CacheError(
            f"these texts' features are not finite {where}: the embeddings are damaged: "
            "clear their cache entry and extract again"
        )
    broken = _non_finite(model)
    if broken:
        return CacheError(f"the head's weights are damaged: {broken} is not finite (nan or inf)")
    return DivergedError(
        f"the head's output is not finite {where}, though its weights and these features are: "
        "it overflows; train it again with a lower lr"
    )


def save_classifier(model: FusionClassifier, directory: str | os.PathLike) -> None:
    """Write ``head.safetensors`` (state dict, buffers included) and ``head.json`` (config).

    Each file is written to a temporary name in ``directory`` and moved into place with
    ``os.replace``, so a crash never leaves a half-written head behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(state, path))
    text = json.dumps(model.config(), indent=2) + "\n"
    atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(text))


def load_classifier(directory: str | os.PathLike) -> FusionClassifier:
    """Rebuild a FusionClassifier from ``head.json`` and load ``head.safetensors`` strictly.

    A missing file is a wrong folder (ConfigError); files that do not parse, disagree or
    hold non-finite weights were damaged after autolayer wrote them (CacheError, exit 4)."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"directory {str(directory)!r} has no {name}")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        model = FusionClassifier(**config)
    except (json.JSONDecodeError, TypeError, ValueError, ConfigError) as error:
        raise CacheError(f"{directory / CONFIG_FILE} is not a valid head config: {error}") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CacheError(f"{directory / WEIGHTS_FILE} is corrupt: {first}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        message = " ".join(str(error).split())
        raise CacheError(
            f"{directory / WEIGHTS_FILE} does not match head.json: {message}"
        ) from None
    broken = _non_finite(model)
    if broken:
        raise CacheError(
            f"{directory / WEIGHTS_FILE} is damaged: {broken} is not finite (nan or inf); "
            "re-run apply to save the head again"
        )
    return model.eval()
