"""The search space: the models, layers and head choices a study is offered, and what each
configuration costs to run, known before any training."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse import issparse

from autolayer.budgets import Budget, Cost
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.fusion import OPERATORS
from autolayer.heads import HEADS, guided_params, head_class

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
    kind: str,
    params: Mapping[str, Any],
    n_outputs: int,
    n_rows: int,
) -> Cost:
    """Latency (backbones up to their layers), memory (weights + the ``n_rows`` embeddings
    the head trains on), and head parameters of one configuration: ``chosen`` at
    ``layers`` under a head of ``kind`` with ``params``, as the head class prices it."""
    head = head_class(kind)
    dims = [c.width for c in chosen]
    n_params = head.n_parameters(dims, n_outputs, params)
    features_mb = n_rows * sum(c.bytes_per_row for c in chosen) / 2**20
    weights_mb = sum(c.weights_mb(layer) for c, layer in zip(chosen, layers, strict=True))
    return Cost(
        latency_ms=sum(c.latency_ms(layer) for c, layer in zip(chosen, layers, strict=True)),
        memory_mb=weights_mb + features_mb + 4 * n_params / 2**20,
        params=n_params,
        fused_dim=head.fused_dim(dims, params),
    )


@dataclass(frozen=True)
class Space:
    """Choices besides models and layers. The paper's width is 1024; smaller ones are cheaper.

    Every head is offered by default: the MLP (early fusion), the linear head (logistic
    regression, or a linear SVM on a sparse source) and late fusion (a linear classifier
    per model, stacked). ``baselines``: the search also trains what a user would try first,
    each model's best layer alone under the linear head (TF-IDF + linear SVM among them),
    outside the trial budget; the one-standard-error rule never chooses below the best of
    them, so the recommendation is never below any baseline on validation (see
    :func:`baseline_trials`, :func:`autolayer.selection.within_one_error`)."""

    operators: tuple[str, ...] | None = None  # None: every operator registered at search time
    widths: tuple[int, ...] = (256, 512, 1024)
    lr: tuple[float, float] = (1e-4, 3e-3)
    hidden: int = 256
    dropout: float = 0.1
    max_epochs: int = 60
    patience: int = 8
    heads: tuple[str, ...] = ("mlp", "linear", "late")  # kinds of :data:`autolayer.heads.HEADS`
    baselines: bool = True

    def __post_init__(self) -> None:
        if not self.heads or not set(self.heads) <= set(HEADS):  # read now: plugins count
            raise ConfigError(f"heads must be some of {', '.join(HEADS)}; got {self.heads!r}")

    def operator_names(self) -> tuple[str, ...]:
        """The operators searched, read when asked (an operator registered after import,
        by a plugin, is searched too)."""
        return self.operators or tuple(OPERATORS)


def heads_for(space: Space, chosen: Sequence[Candidate]) -> tuple[str, ...]:
    """The heads a trial of ``chosen`` may take: the space's that read its inputs
    (:meth:`autolayer.heads.Head.takes`: a dense-only head no sparse source, late fusion
    two models or more). When none does, the first registered head that does, so any
    subset is searched in any space."""
    fit = tuple(k for k in space.heads if head_class(k).takes(chosen))
    return fit or (next(k for k, cls in HEADS.items() if cls.takes(chosen)),)


def space_notes(candidates: Sequence[Candidate], choices: Sequence[str], space: Space) -> list[str]:
    """What a user who narrowed the heads should know before the search: subsets none of
    the heads reads (late fusion alone, for one model) are trained with another head, and
    the baselines need the linear head."""
    by_name = {c.name: c for c in candidates}
    notes = []
    if space.baselines and "linear" not in space.heads:
        notes.append(
            "no baselines: they are each model's best layer under the linear head, which "
            "the heads searched leave out"
        )
    fallbacks = {}
    for choice in choices:
        chosen = [by_name[m] for m in split_models(choice, list(by_name))]
        kind = heads_for(space, chosen)[0]
        if kind not in space.heads:
            fallbacks.setdefault(kind, choice)
    for kind, choice in fallbacks.items():
        notes.append(
            f"no head of {', '.join(space.heads)} reads {choice} (late fusion needs two "
            f"models or more): such trials use the {kind} head"
        )
    return notes


def head_param(space: Space, chosen: Sequence[Candidate]) -> str | None:
    """The Optuna parameter that chooses the head of a trial of ``chosen`` among
    :func:`heads_for`'s (None when there is one): ``"head"`` when they are the space's own,
    else a name of their own (``"head:mlp,linear"``). Optuna refuses a categorical whose
    choices change within a study, and they do: late fusion takes two models or more, so
    a trial of one model chooses among fewer heads than a pair's."""
    heads = heads_for(space, chosen)
    if len(heads) == 1:
        return None
    return "head" if heads == space.heads else "head:" + ",".join(heads)


def fixed_head(space: Space, chosen: Sequence[Candidate], kind: str) -> dict:
    """The parameter that fixes a queued trial of ``chosen`` to a head of ``kind`` (see
    :func:`head_param`; none where the head is no choice)."""
    name = head_param(space, chosen)
    return {} if name is None else {name: kind}


def subsets(names: Sequence[str], max_models: int) -> list[str]:
    """Every model subset of size 1..max_models, as stable strings (Optuna choices)."""
    out = []
    for size in range(1, min(max_models, len(names)) + 1):
        out += [SEPARATOR.join(combo) for combo in itertools.combinations(names, size)]
    return out


def split_models(choice: str, names: Sequence[str]) -> tuple[str, ...]:
    """The models of ``choice`` (names joined with :data:`SEPARATOR`, as :func:`subsets`
    joins them), split back into ``names``: longest name first, so that a name holding
    ``" + "`` itself (a folder ``a + b``) stays whole, and a choice that reads both ways
    (names ``a``, ``b`` and ``a + b``) reads as the one model. ``()`` when ``choice``
    joins no such names (a stored trial whose layers are not suggested yet names none)."""
    if choice in names:
        return (choice,)
    for name in sorted(names, key=len, reverse=True):
        if choice.startswith(name + SEPARATOR):
            rest = split_models(choice[len(name) + len(SEPARATOR) :], names)
            if rest:
                return (name, *rest)
    return ()


def guided_trials(
    candidates: Sequence[Candidate],
    pairs: Sequence[PairEstimate],
    space: Space,
    n_pairs: int = 3,
) -> list[dict]:
    """Trials to run first: the best model alone, then up to ``n_pairs`` pairs whose probe
    on both models beats the better one alone, best joint probe first, each at its best
    layers, under each head of the space that reads its inputs, set as the head guides
    (:meth:`autolayer.heads.Head.guided`; the MLP: concatenation when searched, the smallest
    width). Heads in :data:`GUIDED_ORDER` (the linear head, then the MLP, then late
    fusion, the most expensive to train: a linear classifier per model and per fold), then
    any other head in the space's order.

    Pairs are ranked by their joint probe, not by their gain: two weak models can gain most
    and still lose to one strong model. TPE starts from random trials; these give it strong
    ones to build on, and a user who stops early has what the screen pointed at.
    """
    names = [c.name for c in candidates]
    best_layer = {c.name: c.layers[0] for c in candidates}
    known = [p for p in pairs if set(p.models) <= set(names)]
    if not known:
        return []
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
    by_name = {c.name: c for c in candidates}
    trials = []
    for kind in sorted(space.heads, key=_guided_rank):
        head = head_class(kind)
        for params in chosen:
            models = [by_name[m] for m in split_models(params["models"], list(by_name))]
            if head.takes(models):
                named = fixed_head(space, models, kind)
                trials.append({**params, **head.guided(space, models), **named})
    return trials


GUIDED_ORDER = ("linear", "mlp", "late")  # guided trials' heads, cheapest to train first


def _guided_rank(kind: str) -> int:
    """A head's place among the guided trials (a plugin's: after the built-in ones)."""
    return GUIDED_ORDER.index(kind) if kind in GUIDED_ORDER else len(GUIDED_ORDER)


def baseline_trials(candidates: Sequence[Candidate], space: Space) -> list[dict]:
    """The simple baselines, as trials to run before any other: every candidate's best layer
    (``layers[0]``, the probe's) alone under the linear head, TF-IDF's linear SVM among them,
    when ``space.baselines`` and the space offers the linear head (and it reads that
    candidate). Named as :func:`guided_trials` names its trials, so the guided trial of the
    best model alone under the linear head, the same configuration, is queued once.

    Why: a user expects the recommendation to be at least as good as what they would have
    tried first; the search can only promise that on validation if it trains them, and
    the one-standard-error rule, which prefers a cheaper near-tie, never goes below the
    best finished baseline's score (:func:`autolayer.selection.within_one_error`)."""
    if not space.baselines or "linear" not in space.heads:
        return []
    return [
        {"models": c.name, f"layer:{c.name}": c.layers[0], **fixed_head(space, [c], "linear")}
        for c in candidates
        if head_class("linear").takes([c])
    ]


def check_feasible(
    candidates: Sequence[Candidate], budget: Budget, space: Space, n_outputs: int, n_rows: int
) -> None:
    """Fail fast, naming the binding limits, when not even the cheapest configuration fits
    (the nearest miss: fewest limits broken, then least in excess). A head is priced at
    its guided setting (:meth:`autolayer.heads.Head.guided`: the MLP's smallest width)."""
    misses = []
    for cand in candidates:
        layer = min(cand.layers)
        for kind in heads_for(space, [cand]):
            head = head_class(kind)
            params = guided_params(head, space, [cand])
            cost = cost_of([cand], [layer], kind, params, n_outputs, n_rows)
            if not budget.violations(cost):
                return
            misses.append((f"{cand.name} layer {layer}, {kind} head", cost))
    where, cost = min(misses, key=lambda item: budget.shortfall(item[1]))
    raise ConfigError(
        f"no configuration meets the budget; the nearest miss ({where}) breaks: "
        + "; ".join(budget.violations(cost))
    )


def finite_configurations(
    candidates: Sequence[Candidate], choices: Sequence[str], space: Space
) -> int | None:
    """How many configurations the space has: per model subset, its layer combinations
    times the settings of the heads it may take (:func:`heads_for`). None when one of
    those heads has infinitely many (the MLP's learning rate), as a sparse source's has."""
    by_name = {c.name: c for c in candidates}
    total = 0
    for choice in choices:
        chosen = [by_name[m] for m in split_models(choice, list(by_name))]
        settings = [head_class(k).n_configurations(space) for k in heads_for(space, chosen)]
        if None in settings:
            return None
        total += math.prod(len(c.layers) for c in chosen) * sum(settings)
    return total


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
