"""Fusion operators: how the MLP head (:mod:`autolayer.heads.mlp`) combines the ``m``
projected embeddings ``[B, d]`` of the chosen models into one vector, after Gwak & Jung
(2025), "Layer-Aware Embedding Fusion for LLMs in Text Classifications" (arXiv 2504.05764).

Operators live in a name -> class registry (like Optuna's samplers) so the search can
enumerate them, and each states its output size and parameter count as class methods so
the search can price a configuration before building anything.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from autolayer.errors import ConfigError
from autolayer.registry import Registry

__all__ = [
    "OPERATORS",
    "FusionOperator",
    "fused_dim",
    "make_operator",
    "register",
]


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


OPERATORS = Registry("operator")
register = OPERATORS.register  # class decorator: @register("name")


def _check_shape(operator: str, n_inputs: int, width: int) -> type[FusionOperator]:
    """Resolve ``operator`` and reject impossible ``(n_inputs, width)`` before any building."""
    cls = OPERATORS.find(operator)
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
