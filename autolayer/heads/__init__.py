"""Heads, by kind: a small base and one module per implementation (see base)."""

from autolayer.heads import (  # noqa: F401 - register the "mlp", "linear" and "late" kinds
    late,
    linear,
    mlp,
)
from autolayer.heads.base import (
    HEADS,
    CrossValidation,
    Fitting,
    Head,
    HeadFit,
    cross_validate,
    guided_params,
    head_class,
    load_head,
    make_head,
    register_head,
)

__all__ = [
    "HEADS",
    "CrossValidation",
    "Fitting",
    "Head",
    "HeadFit",
    "cross_validate",
    "guided_params",
    "head_class",
    "load_head",
    "make_head",
    "register_head",
]
