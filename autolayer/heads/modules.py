"""The torch building blocks both heads share: standardised inputs, a dense or sparse
Linear+ReLU projection, a sparse input times a linear head's columns, Adam on a sparse
table's touched rows, the plumbing that turns ``[N, D_i]`` arrays into tensors and batched
logits under a forked, seeded RNG, and :class:`NetHead`, a head whose learned state is one
``nn.Module``."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.sparse import csr_matrix, issparse, spmatrix
from torch import Tensor, nn
from torch.nn import functional as F

from autolayer.device import resolve_device
from autolayer.errors import CacheError
from autolayer.heads.base import Head

EVAL_BATCH = 4096  # rows per forward pass when nothing is learned
# A head with fewer learned dense parameters than this fits on one torch thread (the caller's
# count is restored after). studies/bench/head_threads.py, 2 cores, a job on the other one:
# an epoch of an MLP head of 165k to 8.1M parameters took 4x to 140x as long on both threads
# as on one (each parallel op waits for the thread the job delays), and on one thread 0.5x
# to 1.1x its time without the job; a linear head (20,000 rows x 1,024) took 2x as long on
# both. Larger heads were not measured: they keep the caller's count. On an idle machine a
# second thread made an epoch 1.1x to 1.7x faster: the price of never exploding beside a job.
ONE_THREAD_BELOW = 10_000_000


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


def sparse_linear(x: SparseBatch, weight: Tensor) -> Tensor:
    """``x [B, V] @ weight.T`` for ``weight [C, V]`` (a linear head's columns of a sparse
    input): only the columns the batch uses are gathered, so the cost follows the batch's
    non-zeros, not ``V``."""
    unique, inverse = torch.unique(x.indices, return_inverse=True)
    columns = weight.index_select(1, unique).t().contiguous()  # [U, C]
    return F.embedding_bag(inverse, columns, x.offsets, mode="sum", per_sample_weights=x.weights)


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


@torch.no_grad()
def standardise(projections: Sequence[nn.Module], inputs: Sequence[Any]) -> None:
    """Store per-feature mean and std of each training array ``[N, D_i]`` in its dense
    projection's buffers (a sparse input's module, which is not standardised, is skipped).

    Features whose std is below 1e-6 (constant in training) are only centred, not divided.
    A non-finite feature (nan or inf) is refused here: it would make every loss NaN, which
    looks like a diverged head.
    """
    for i, (projection, array) in enumerate(zip(projections, inputs, strict=True)):
        if not isinstance(projection, _Standardised):  # a sparse input's: no statistics
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


def n_learned(net: nn.Module) -> int:
    """Learned scalars of ``net``: its parameters and its sparse projections' tables (a
    buffer, updated by :class:`_RowAdam`)."""
    tables = (m.weight.numel() for m in net.modules() if isinstance(m, _SparseProjection))
    return sum(p.numel() for p in net.parameters()) + sum(tables)


@contextmanager
def seeded(seed: int, device: str | torch.device | None) -> Iterator[torch.device]:
    """The resolved device, with torch's global RNG (and that device's, on CUDA) seeded
    inside and restored after: a fit leaves the caller's random state untouched, and on
    CPU the same inputs and seed give identical results. The caller's torch thread count is
    restored after too, also on an error: :meth:`NetHead._start` lowers it for a small
    head."""
    device = resolve_device(device)
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            yield device
    finally:
        torch.set_num_threads(threads)


def head_threads(n_parameters: int) -> int:
    """Torch threads for fitting a head of ``n_parameters`` learned dense scalars on the
    CPU: one below :data:`ONE_THREAD_BELOW`, else the current count (never more: a
    ``--threads`` choice stays an upper bound). A small head's ops are short, and when
    another job holds a core each parallel op waits for the thread it delays."""
    return 1 if n_parameters < ONE_THREAD_BELOW else torch.get_num_threads()


def to_tensor(array: Any, device: torch.device) -> Tensor | SparseRows:
    """A float32 tensor; read-only inputs (memory-mapped cache arrays) are copied first.
    A sparse matrix stays sparse: its rows become batches (see :class:`SparseRows`)."""
    if issparse(array):
        return SparseRows(array, device)
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array, device=device)


def batched_logits(
    net: nn.Module, inputs: Sequence[Tensor | SparseRows], batch_size: int = EVAL_BATCH
) -> Tensor:
    """Logits ``[N, C]`` in eval mode, in large batches, without autograd bookkeeping."""
    net.eval()
    with torch.inference_mode():
        n = len(inputs[0])
        return torch.cat(
            [net([x[i : i + batch_size] for x in inputs]) for i in range(0, n, batch_size)]
        )


class NetHead(Head):
    """A head whose learned state is one ``nn.Module`` (``net_``, on the CPU once fitted):
    it is built by ``_build``, its state dict is what ``head.safetensors`` holds."""

    @abstractmethod
    def _build(self) -> nn.Module:
        """The untrained network for ``input_dims_``, ``sparse_`` and ``n_outputs_``."""

    def _start(
        self, train: Sequence[Any], target: np.ndarray, device: torch.device
    ) -> tuple[list[Tensor | SparseRows], Tensor]:
        """Build ``net_``, standardised on ``train`` and on ``device``; return ``train``
        and ``target`` as tensors there. On the CPU, the fit's torch threads are set to
        :func:`head_threads` of its parameters (inside :func:`seeded`, which restores
        them); a sparse table is a buffer, not counted: its rows are gathered, not
        multiplied."""
        self.net_ = self._build()
        if device.type == "cpu":
            torch.set_num_threads(head_threads(sum(p.numel() for p in self.net_.parameters())))
        standardise(self.net_.projections, train)
        self.net_.to(device)
        x = [to_tensor(array, device) for array in train]
        # a copy (a split's labels are read-only), of the dtype the task's target has
        return x, torch.tensor(target, device=device)

    def _score(self, inputs: Sequence[Tensor | SparseRows], target: np.ndarray) -> float:
        """``self.metric`` of the task's decisions on ``inputs`` against ``target``, by the
        untuned task (:meth:`autolayer.task.Task.untuned`): it judges a fit (early stopping,
        the score a fit reports) as it was judged before a rule was tuned on its output."""
        proba = self.task.proba(batched_logits(self.net_, inputs)).cpu().numpy()
        return self.task.untuned().score(proba, target, self.metric)

    def _proba(self, inputs: Sequence[Any]) -> np.ndarray:
        device = torch.device("cpu")
        logits = batched_logits(self.net_, [to_tensor(x, device) for x in inputs])
        return self.task.proba(logits).numpy()

    def _state(self) -> dict[str, Tensor]:
        return self.net_.state_dict()

    def _restore(self, state: dict[str, Tensor]) -> None:
        if not self.input_dims_ or min(self.input_dims_) < 1 or self.n_outputs_ < 2:
            raise ValueError(
                f"input_dims must be widths >= 1 and n_outputs >= 2; got "
                f"{self.input_dims_} and {self.n_outputs_}"
            )
        net = self._build()
        net.load_state_dict(state)
        self.net_ = net.eval()
