"""Budgets: how long the search may run, and limits the configuration it recommends must meet.

Each limit is a small :class:`Constraint` class in a registry (like the fusion operators): its
name is both the keyword of :class:`Budget` and the CLI flag (``max_latency_ms`` →
``--max-latency-ms``), and it says how it reads a configuration's cost and when it is broken.
The search, the report and the CLI iterate over the registry, so a new kind of budget is one
class (and, for the CLI, nothing more: its flag is derived from it). What the limits measure
is a configuration's :class:`Cost`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from autolayer.errors import ConfigError
from autolayer.options import Interval


@dataclass(frozen=True)
class Cost:
    """What a configuration costs to run: per-text latency, memory, head size."""

    latency_ms: float
    memory_mb: float
    params: int
    fused_dim: int

    def as_dict(self) -> dict:
        """Raw values: the budget compares these exactly; only the report rounds them."""
        return {
            "latency_ms": float(self.latency_ms),
            "memory_mb": float(self.memory_mb),
            "params": int(self.params),
            "fused_dim": int(self.fused_dim),
        }


class Constraint(ABC):
    """A limit on one measure of a configuration's cost (computed before any training)."""

    name: ClassVar[str]  # keyword of Budget and, with dashes, the CLI flag
    help: ClassVar[str]
    kind: ClassVar[type] = float  # int or float: how the CLI parses the limit

    @staticmethod
    @abstractmethod
    def measure(cost: Cost) -> float:
        """The measured value of ``cost`` that the limit bounds."""

    @classmethod
    def describe(cls, value: float) -> str:
        """The measured value for a person, e.g. ``latency 3.20 ms``."""
        return f"{cls.name.removeprefix('max_')} {value:g}"

    @classmethod
    def flag(cls) -> str:
        return "--" + cls.name.replace("_", "-")

    @classmethod
    def violation(cls, limit: float, cost: Cost) -> str | None:
        """Why ``cost`` breaks ``limit`` (None when it does not); raw values compared."""
        value = cls.measure(cost)
        if value <= limit:
            return None
        return f"{cls.describe(value)} > {cls.flag().removeprefix('--')} {limit:g}"


CONSTRAINTS: dict[str, type[Constraint]] = {}
_C = TypeVar("_C", bound=type[Constraint])


def register_constraint(cls: _C) -> _C:
    """Class decorator adding a Constraint to CONSTRAINTS under its ``name``."""
    if cls.name in CONSTRAINTS or cls.name in ("n_trials", "timeout", "max_models"):
        raise ConfigError(f"budget {cls.name!r} is already defined")
    CONSTRAINTS[cls.name] = cls
    return cls


@register_constraint
class MaxLatency(Constraint):
    """Backbone time per text, up to the chosen layers (measured, scaled to the depth)."""

    name = "max_latency_ms"
    help = "Backbone time per text, up to the chosen layers, in ms."

    @staticmethod
    def measure(cost: Cost) -> float:
        return cost.latency_ms

    @classmethod
    def describe(cls, value: float) -> str:
        return f"latency {value:.2f} ms"


@register_constraint
class MaxMemory(Constraint):
    """Weights up to the chosen layers + the features the head trains on + the head."""

    name = "max_memory_mb"
    help = "Weights + features + head, in MB."

    @staticmethod
    def measure(cost: Cost) -> float:
        return cost.memory_mb

    @classmethod
    def describe(cls, value: float) -> str:
        return f"memory {value:.0f} MB"


@register_constraint
class MaxParams(Constraint):
    """Learned parameters of the fusion head (projections, operator, MLP)."""

    name = "max_params"
    help = "Fusion-head parameters at most."
    kind = int

    @staticmethod
    def measure(cost: Cost) -> float:
        return cost.params

    @classmethod
    def describe(cls, value: float) -> str:
        return f"head parameters {int(value):,}"


COUNT = Interval(int, 1)  # trials, models fused
TIMEOUT = Interval(float, 0, closed="neither", unit="seconds")
LIMIT = Interval(float, 0)  # any registered constraint's limit


@dataclass(frozen=True, init=False)
class Budget:
    """Limits on the search itself (trials, time, models fused) and on the configuration it
    may recommend: one keyword per registered :class:`Constraint` (None: no limit).

    ``Budget(n_trials=40, max_latency_ms=20)``; ``budget.max_latency_ms`` reads a limit.
    """

    n_trials: int
    timeout: float | None
    max_models: int
    limits: dict

    def __init__(
        self,
        n_trials: int = 30,
        timeout: float | None = None,
        max_models: int = 2,
        **limits: float | None,
    ) -> None:
        unknown = sorted(set(limits) - set(CONSTRAINTS))
        if unknown:
            raise ConfigError(
                f"unknown budget(s) {', '.join(unknown)}; known: {', '.join(CONSTRAINTS)}"
            )
        object.__setattr__(self, "n_trials", COUNT.check("n_trials", n_trials))
        object.__setattr__(self, "timeout", TIMEOUT.check("timeout", timeout, optional=True))
        object.__setattr__(self, "max_models", COUNT.check("max_models", max_models))
        kept = {k: LIMIT.check(k, v, optional=True) for k, v in limits.items()}
        object.__setattr__(self, "limits", {k: v for k, v in kept.items() if v is not None})

    def __getattr__(self, name: str) -> float | None:
        if name in CONSTRAINTS:
            return self.limits.get(name)
        raise AttributeError(name)

    def violations(self, cost: Cost) -> list[str]:
        """Human-readable list of the limits ``cost`` exceeds (empty when feasible)."""
        broken = (CONSTRAINTS[name].violation(limit, cost) for name, limit in self.limits.items())
        return [reason for reason in broken if reason]

    def shortfall(self, cost: Cost) -> tuple[int, float]:
        """How far ``cost`` is from meeting the limits: how many it breaks, then by how much
        in all (each excess relative to its limit), so that the nearest miss can be named
        whichever limit binds."""
        excess = [
            CONSTRAINTS[name].measure(cost) / max(limit, 1e-12) - 1
            for name, limit in self.limits.items()
        ]
        return sum(e > 0 for e in excess), sum(e for e in excess if e > 0)
