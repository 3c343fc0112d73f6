"""The search space: the models, layers and head choices a study is offered, and what each
configuration costs to run, known before any training."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.sparse import issparse

from autolayer.budgets import Budget, Cost
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.fusion import HEADS, OPERATORS, count_parameters, fused_dim

SEPARATOR = " + "


class LayerCost(NamedTuple):
    """Running a source up to one layer: time per text and memory of its weights."""

    latency_ms: float
    memory_mb: float


@dataclass(frozen=True)
class Candidate:
    """One model as the search sees it: candidate layers, their embeddings, and its costs.

    ``train``/``val`` are ``[N, k, D]`` with ``k = len(layers)``, or for a sparse source
    (TF-IDF, one state) sparse matrices ``[N, V]``. ``ms_per_text`` is the
    measured full-depth inference time; ``costs`` what running up to each candidate layer
    costs, as its feature source prices it (the search knows nothing of models).
    """

    name: str
    layers: tuple[int, ...]
    n_hidden_states: int
    train: np.ndarray
    val: np.ndarray
    ms_per_text: float
    costs: Mapping[int, LayerCost]

    @property
    def width(self) -> int:
        return int(self.train.shape[-1])

    def latency_ms(self, layer: int) -> float:
        return self.costs[layer].latency_ms

    def weights_mb(self, layer: int) -> float:
        return self.costs[layer].memory_mb

    def features(self, layer: int, split: str) -> np.ndarray:
        array = self.train if split == "train" else self.val
        if self.sparse:
            return array
        return np.ascontiguousarray(array[:, self.layers.index(layer)])

    @property
    def sparse(self) -> bool:
        return issparse(self.train)

    @property
    def bytes_per_row(self) -> float:
        """Memory one row's features take: float32 values, and for a sparse matrix their
        int32 column indices and the row pointer."""
        if self.sparse:
            rows = max(self.train.shape[0], 1)
            return (8 * self.train.nnz + 4 * (rows + 1)) / rows
        return 4.0 * self.width


def cost_of(
    chosen: Sequence[Candidate],
    layers: Sequence[int],
    operator: str,
    width: int,
    hidden: int,
    n_classes: int,
    n_rows: int,
    head: str = "mlp",
) -> Cost:
    """Latency (backbones up to their layers), memory (weights + the ``n_rows`` embeddings
    the head trains on), and head parameters of one configuration."""
    dims = [c.width for c in chosen]
    params = count_parameters(dims, width, operator, hidden, n_classes, head)
    features_mb = n_rows * sum(c.bytes_per_row for c in chosen) / 2**20
    weights_mb = sum(c.weights_mb(layer) for c, layer in zip(chosen, layers, strict=True))
    return Cost(
        latency_ms=sum(c.latency_ms(layer) for c, layer in zip(chosen, layers, strict=True)),
        memory_mb=weights_mb + features_mb + 4 * params / 2**20,
        params=params,
        fused_dim=sum(dims) if head == "linear" else fused_dim(len(chosen), width, operator),
    )


@dataclass(frozen=True)
class Space:
    """Choices besides models and layers. The paper's width is 1024; smaller ones are cheaper."""

    operators: tuple[str, ...] | None = None  # None: every operator registered at search time
    widths: tuple[int, ...] = (256, 512, 1024)
    lr: tuple[float, float] = (1e-4, 3e-3)
    hidden: int = 256
    dropout: float = 0.1
    max_epochs: int = 60
    patience: int = 8
    heads: tuple[str, ...] = ("mlp",)  # "linear" too: offered where every input is dense

    def __post_init__(self) -> None:
        if not self.heads or not set(self.heads) <= set(HEADS):
            raise ConfigError(f"heads must be some of {', '.join(HEADS)}; got {self.heads!r}")

    def operator_names(self) -> tuple[str, ...]:
        """The operators searched, read when asked (an operator registered after import,
        by a plugin, is searched too)."""
        return self.operators or tuple(OPERATORS)


def subsets(names: Sequence[str], max_models: int) -> list[str]:
    """Every model subset of size 1..max_models, as stable strings (Optuna choices)."""
    out = []
    for size in range(1, min(max_models, len(names)) + 1):
        out += [SEPARATOR.join(combo) for combo in itertools.combinations(names, size)]
    return out


GUIDE_LR = 1e-3  # the learning rate of guided first trials (clipped to the space's range)


def guided_trials(
    candidates: Sequence[Candidate],
    pairs: Sequence[PairEstimate],
    space: Space,
    n_pairs: int = 3,
) -> list[dict]:
    """Trials to run first: the best model alone, then up to ``n_pairs`` pairs whose probe
    on both models beats the better one alone, best joint probe first, each at its best
    layers, fused by concatenation when searched, with the smallest width.

    Pairs are ranked by their joint probe, not by their gain: two weak models can gain most
    and still lose to one strong model. TPE starts from random trials; these give it strong
    ones to build on, and a user who stops early has what the screen pointed at.
    """
    names = [c.name for c in candidates]
    best_layer = {c.name: c.layers[0] for c in candidates}
    known = [p for p in pairs if set(p.models) <= set(names)]
    if not known:
        return []
    head = {"width": min(space.widths), "lr": min(max(GUIDE_LR, space.lr[0]), space.lr[1])}
    if len(space.heads) > 1:
        head["head"] = "mlp"
    alone = {n: acc for p in known for n, acc in zip(p.models, p.accuracy, strict=True)}
    best = max(alone, key=alone.__getitem__)
    chosen = [{"models": best, f"layer:{best}": best_layer[best]}]
    for pair in sorted((p for p in known if p.gain > 0), key=lambda p: -p.joint)[:n_pairs]:
        a, b = sorted(pair.models, key=names.index)
        chosen.append(
            {
                "models": SEPARATOR.join((a, b)),
                f"layer:{a}": best_layer[a],
                f"layer:{b}": best_layer[b],
            }
        )
    sparse = {c.name for c in candidates if c.sparse}
    linear = [
        {**c, "head": "linear"}
        for c in chosen
        if "linear" in space.heads and not sparse & set(c["models"].split(SEPARATOR))
    ]
    operators = space.operator_names()
    operator = {"operator": "concat" if "concat" in operators else operators[0]}
    mlp = [{**c, **(operator if SEPARATOR in c["models"] else {}), **head} for c in chosen]
    return linear + mlp if "mlp" in space.heads else linear


def check_feasible(
    candidates: Sequence[Candidate], budget: Budget, space: Space, n_classes: int, n_rows: int
) -> None:
    """Fail fast, naming the binding limits, when not even the cheapest configuration fits
    (the nearest miss: fewest limits broken, then least in excess)."""
    misses = []
    for cand in candidates:
        layer = min(cand.layers)
        for head in ("mlp",) if cand.sparse else space.heads:
            cost = cost_of(
                [cand], [layer], "concat", min(space.widths), space.hidden, n_classes, n_rows, head
            )
            if not budget.violations(cost):
                return
            misses.append((f"{cand.name} layer {layer}, {head} head", cost))
    where, cost = min(misses, key=lambda item: budget.shortfall(item[1]))
    raise ConfigError(
        f"no configuration meets the budget; the nearest miss ({where}) breaks: "
        + "; ".join(budget.violations(cost))
    )


def finite_configurations(
    candidates: Sequence[Candidate], choices: Sequence[str], space: Space
) -> int | None:
    """How many configurations a space of linear heads only has (None with an MLP head, or
    with a sparse source, which always takes the MLP head: see
    :func:`autolayer.search._suggest_head`)."""
    if "mlp" in space.heads or any(c.sparse for c in candidates):
        return None
    layers = {c.name: len(c.layers) for c in candidates}
    return sum(math.prod(layers[m] for m in choice.split(SEPARATOR)) for choice in choices)


def space_signature(candidates: Sequence[Candidate], choices: Sequence[str], space: Space) -> dict:
    """The choices Optuna is offered: a stored study must have been offered the same ones
    (Optuna refuses a categorical whose choices change, mid-study, with a traceback)."""
    return {
        "models": list(choices),
        "layers": {c.name: list(c.layers) for c in candidates},
        "operators": list(space.operator_names()),
        "widths": list(space.widths),
        "lr": list(space.lr),
        **({"heads": list(space.heads)} if space.heads != ("mlp",) else {}),
    }
