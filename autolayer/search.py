"""The Optuna study: which models, which layer of each, which fusion operator, what head.

The space is kept small on purpose: each model offers only its scorer's top-k layers, so a
few dozen trials cover it. Each trial's costs (inference latency of the backbones up to the
chosen layers, memory of weights and fused features, head parameters) are computed *before*
training, and a configuration that breaks the budget is never trained: it is recorded as a
pruned trial with the reason. Trials report their per-epoch validation metric so a median
pruner stops hopeless ones early. Studies live in an Optuna storage (SQLite file by default),
so re-running the same command resumes, and several workers can share one study.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
from scipy.sparse import issparse

from autolayer.anchor import against_anchor, is_anchor, unbeatable
from autolayer.budgets import Budget
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError, DivergedError
from autolayer.fusion import (
    HEADS,
    OPERATORS,
    FusionParams,
    count_parameters,
    cross_validate,
    fused_dim,
    train_fusion,
)

logger = logging.getLogger("autolayer")

SEPARATOR = " + "
# Trial attributes of configurations that were never trained (they cost no budget).
INFEASIBLE = "infeasible"  # breaks a budget: its reasons
SURPLUS = "surplus"  # other workers' running trials already fill the budget
REPEAT = "repeat_of"  # a linear head on layers already tried: the earlier trial's number
OVER_BUDGET = "over_budget"  # (in a summary only) why a finished trial breaks this budget


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


@dataclass(frozen=True)
class TrialSummary:
    """A read-only view of one trial, enough to rank, report and export it."""

    number: int
    state: str
    values: tuple[float, ...] | None
    models: tuple[str, ...]
    layers: tuple[int, ...]
    operator: str
    width: int
    lr: float
    attrs: dict = field(default_factory=dict)
    head: str = "mlp"

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage: str
    best: TrialSummary
    trials: tuple[TrialSummary, ...]
    pareto: tuple[TrialSummary, ...]
    why: str = ""  # why ``best`` was chosen, when a rule (anchor, one standard error) chose it
    anchor: bool = False  # ``best`` is the few-label anchor's trial, kept by the anchor rule
    notes: tuple[str, ...] = ()  # what the report must say: trials left out, a timeout
    # heads trained in the study while this run searched (other workers' included; None:
    # read from storage only)
    trained: int | None = None


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


def _summary(trial: optuna.trial.FrozenTrial) -> TrialSummary:
    params = trial.params
    models = tuple(params["models"].split(SEPARATOR)) if "models" in params else ()
    if any(f"layer:{m}" not in params for m in models):
        models = ()  # another worker is still suggesting this trial's parameters
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        values=tuple(trial.values) if trial.values else None,
        models=models,
        layers=tuple(int(params[f"layer:{m}"]) for m in models),
        operator=params.get("operator", "concat"),
        width=int(params.get("width", 0)),
        lr=float(params.get("lr", 0.0)),
        attrs=dict(trial.user_attrs),
        head=params.get("head", trial.user_attrs.get("head", "mlp")),
    )


class _Objective:
    """Callable objective over the fixed candidates; holds nothing Optuna has to pickle."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        y_train: np.ndarray,
        y_val: np.ndarray,
        budget: Budget,
        space: Space,
        metric: str,
        seed: int,
        multi_objective: bool,
        wait: float = 30.0,
        folds: Sequence[np.ndarray] = (),
    ) -> None:
        self.wait = wait
        self.by_name = {c.name: c for c in candidates}
        self.choices = subsets([c.name for c in candidates], budget.max_models)
        self.y_train, self.y_val, self.folds = y_train, y_val, tuple(folds)
        self.n_classes = n_classes_of(y_train, y_val)
        self.budget, self.space, self.metric = budget, space, metric
        self.seed, self.multi_objective = seed, multi_objective

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        chosen = [
            self.by_name[n]
            for n in trial.suggest_categorical("models", self.choices).split(SEPARATOR)
        ]
        layers = [int(trial.suggest_categorical(f"layer:{c.name}", c.layers)) for c in chosen]
        head = _suggest_head(trial, self.space, chosen)
        trial.set_user_attr("head", head)  # a param only where it was a choice
        operator, width, lr = "concat", 0, 0.0
        if head == "mlp":
            if len(chosen) > 1:
                operator = trial.suggest_categorical("operator", self.space.operator_names())
            width = int(trial.suggest_categorical("width", self.space.widths))
            lr = trial.suggest_float("lr", *self.space.lr, log=True)
        cost = cost_of(
            chosen,
            layers,
            operator,
            width,
            self.space.hidden,
            self.n_classes,
            len(self.y_train),
            head,
        )
        for key, value in cost.as_dict().items():
            trial.set_user_attr(key, value)
        broken = self.budget.violations(cost)
        if broken:
            trial.set_user_attr(INFEASIBLE, "; ".join(broken))
            raise optuna.TrialPruned("infeasible: " + "; ".join(broken))
        earlier = _same_linear_head(trial, self.budget) if head == "linear" else None
        if earlier is not None:
            trial.set_user_attr(REPEAT, earlier)
            raise optuna.TrialPruned(f"repeat: trial {earlier} trained this linear head")
        if slots_taken(trial.study, trial.number, self.budget) >= self.budget.n_trials:
            # Other workers' running trials fill the budget: wait for them instead of
            # training one too many. If one of them died, its retry will need a worker.
            trial.set_user_attr(SURPLUS, True)
            time.sleep(self.wait)
            raise optuna.TrialPruned("surplus: running trials of other workers fill the budget")
        params = FusionParams(
            operator=operator,
            width=width,
            hidden=self.space.hidden,
            dropout=self.space.dropout,
            lr=lr,
            max_epochs=self.space.max_epochs,
            patience=self.space.patience,
            metric=self.metric,
            head=head,
        )
        train = [c.features(layer, "train") for c, layer in zip(chosen, layers, strict=True)]
        if self.folds:
            result = cross_validate(
                train,
                self.y_train,
                self.folds,
                params=params,
                seed=self.seed,
                n_classes=self.n_classes,
            )
            epochs_run = len(result.curve)
            trial.set_user_attr("fold_scores", list(result.fold_scores))
            trial.set_user_attr("n_rows", sum(len(fold) for fold in self.folds))  # held out
        else:
            result = train_fusion(
                train,
                self.y_train,
                [c.features(layer, "val") for c, layer in zip(chosen, layers, strict=True)],
                self.y_val,
                params=params,
                seed=self.seed,
                on_epoch=None if self.multi_objective else _pruning_hook(trial),
            )
            epochs_run = len(result.history)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("train_seconds", result.train_seconds)
        if not self.multi_objective and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epochs_run - 1}")
        if self.multi_objective:
            return result.best_val_metric, cost.latency_ms
        return result.best_val_metric


def n_classes_of(y_train: np.ndarray, y_val: np.ndarray) -> int:
    """Classes the heads predict (``y_val`` is empty under cross-validation)."""
    return int(np.concatenate([y_train, y_val]).max()) + 1


def _suggest_head(trial: optuna.Trial, space: Space, chosen: Sequence[Candidate]) -> str:
    """The head of a trial: a choice only where it is one (the linear head takes dense
    features only, so a trial with a sparse source gets the MLP)."""
    heads = space.heads if not any(c.sparse for c in chosen) else ("mlp",)
    return heads[0] if len(heads) == 1 else trial.suggest_categorical("head", heads)


def _pruning_hook(trial: optuna.Trial) -> Callable[[int, float], bool]:
    def on_epoch(epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()

    return on_epoch


def counts(attrs: Mapping, budget: Budget | None = None) -> bool:
    """Whether a trial (by its user attributes) used the budget: infeasible, surplus and
    repeated trials are never trained, and a trial whose stored cost breaks ``budget`` (an
    earlier run's, under a looser one) is not counted against it."""
    if INFEASIBLE in attrs or SURPLUS in attrs or REPEAT in attrs:
        return False
    cost = _cost(attrs) if budget is not None else None
    return cost is None or not budget.violations(cost)


def _same_linear_head(trial: optuna.Trial, budget: Budget) -> int | None:
    """The number of a finished trial with the same parameters, if any. A linear head has
    no width or learning rate to vary, so TPE often proposes one again (6 of 10 trials on
    a latency budget that allowed little else); training it twice would only spend the
    budget."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    done = trial.study.get_trials(deepcopy=False, states=states)
    same = (t for t in done if t.number < trial.number and t.params == trial.params)
    return next((t.number for t in same if counts(t.user_attrs, budget)), None)


def trained_count(study: optuna.Study, budget: Budget | None = None) -> tuple[int, int]:
    """(trials trained within ``budget``, trials finished): infeasible, surplus and repeated
    trials finish untrained (see :func:`counts`)."""
    done = study.get_trials(
        deepcopy=False,
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
    )
    counted = [t for t in done if counts(t.user_attrs, budget)]
    return len(counted), len(done) - sum(SURPLUS in t.user_attrs for t in done)


def slots_taken(study: optuna.Study, number: int, budget: Budget | None = None) -> int:
    """Trials trained, plus trials still to train that were created before trial ``number``.

    Two workers that start together both see the other running; counting only earlier
    trials gives the budget's last slot to exactly one of them, so a shared study trains
    exactly ``n_trials`` however many workers it has. An earlier trial still waiting (a
    dead worker's retry, queued but not yet taken) holds its slot too: whoever takes it
    counts only trials before it, so without it both would train.
    """
    state = optuna.trial.TrialState
    states = (state.COMPLETE, state.PRUNED, state.RUNNING, state.WAITING)
    return sum(
        counts(t.user_attrs, budget) and (t.state.is_finished() or t.number < number)
        for t in study.get_trials(deepcopy=False, states=states)
    )


UNBEATABLE = "anchor_unbeatable"  # study attribute: the search stopped after the anchor
LIMITS = "budget_limits"  # study attribute: the limits of the latest run's budget


def anchor_can_stop(budget: Budget, space: Space, multi_objective: bool = False) -> bool:
    """Whether an unbeatable anchor may end the search (and spare the other models'
    extraction): only one objective (a Pareto front has room beside it), the linear head
    offered (the anchor's), and no timeout (the margin assumes every trial of the budget
    runs; fewer trials would need a smaller one)."""
    return not multi_objective and "linear" in space.heads and budget.timeout is None


def _stop_if_unbeatable(
    budget: Budget, finite: int | None = None
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop the study once the anchor's trial is in and no trial of the budget could beat it
    (:func:`autolayer.anchor.unbeatable`): the rest could not change the answer."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if anchor_unbeatable(study, budget, finite):
            study.stop()

    return callback


def anchor_unbeatable(study: optuna.Study, budget: Budget, finite: int | None = None) -> bool:
    """Whether the study has the anchor's finished trial, within ``budget``'s limits and out
    of reach of its trials (or of the space's ``finite`` configurations, when fewer: see
    :func:`_finite`); the study's :data:`UNBEATABLE` mark follows the answer. Read
    from the storage, so a resumed run, or another worker, sees what an earlier one found;
    decided afresh each time, because a resumed run may bring another budget."""
    anchor = _anchor_of(study)
    found = False
    if anchor is not None:
        name, last = anchor
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        found = any(
            is_anchor(_summary(t), name, last) and _out_of_reach(t, budget, finite)
            for t in complete
        )
    if found != bool(study.user_attrs.get(UNBEATABLE)):
        study.set_user_attr(UNBEATABLE, found)
    return found


def _requeue_anchor(study: optuna.Study, first: Sequence[dict], budget: Budget) -> None:
    """Queue the anchor's trial again when a resumed study holds none that was trained or
    will run under ``budget``: an earlier run's tighter limits made it infeasible, or a
    worker's trial limit left it untrained (surplus), and without it every other trial
    would go unjudged by the anchor rule."""
    anchor = _anchor_of(study)
    if anchor is None:
        return
    name, last = anchor
    params = next(
        (p for p in first if p.get("models") == name and p.get(f"layer:{name}") == last), None
    )
    if params is None:
        return
    state = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.params != params and t.system_attrs.get("fixed_params") != params:
            continue
        if t.state in (state.WAITING, state.RUNNING):
            return  # it will run
        if t.state in (state.COMPLETE, state.PRUNED) and counts(t.user_attrs):
            return  # it was trained
        if INFEASIBLE in t.user_attrs and _still_tried(t.user_attrs, budget):
            return  # it breaks this budget too
    study.enqueue_trial(params)


def _anchor_of(study: optuna.Study) -> tuple[str, int] | None:
    """The study's anchor and its last layer, from the stored context (None: no anchor)."""
    context = study.user_attrs.get("context") or {}
    name = (context.get("options") or {}).get("anchor")
    info = context.get("models", {}).get(name) if name else None
    return None if info is None else (name, info["n_hidden_states"] - 1)


def _out_of_reach(trial: optuna.trial.FrozenTrial, budget: Budget, finite: int | None) -> bool:
    rows = trial.user_attrs.get("n_rows")  # recorded by cross-validated trials
    if not rows or not unbeatable(trial.values[0], rows, budget.n_trials, configurations=finite):
        return False
    cost = _cost(trial.user_attrs)
    return cost is not None and not budget.violations(cost)


def _stop_after(
    budget: Budget, finite: int | None = None, drawn_before: int = 0
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop once ``budget.n_trials`` trials were trained (finished or pruned by the pruner).

    Infeasible and repeated trials cost nothing and do not count, but at most
    ``20 × n_trials`` trials are drawn by this run (``drawn_before`` were drawn earlier) so
    a nearly infeasible space still ends, and a resumed run gets its own draws; a space of
    ``finite`` configurations (linear heads only) ends once each was tried
    (:func:`exhausted`). Counting in the shared storage makes the limit global across
    workers and across resumed runs.
    """

    def callback(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        trained, done = trained_count(study, budget)
        if (
            trained >= budget.n_trials
            or done - drawn_before >= 20 * budget.n_trials
            or exhausted(study, finite, budget)
        ):
            study.stop()

    return callback


def exhausted(study: optuna.Study, finite: int | None, budget: Budget | None = None) -> bool:
    """Whether every one of a space's ``finite`` configurations was tried (trained, found
    infeasible, or pruned); never for an infinite space (``None``: an MLP head's learning
    rate is continuous). Under ``budget``, a configuration an earlier run found infeasible
    counts as tried only if it still breaks this budget."""
    if finite is None:
        return False
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    tried = {
        tuple(sorted(t.params.items()))
        for t in study.get_trials(deepcopy=False, states=states)
        if SURPLUS not in t.user_attrs and _still_tried(t.user_attrs, budget)
    }
    return len(tried) >= finite


def _still_tried(attrs: Mapping, budget: Budget | None) -> bool:
    """Whether a trial (by its user attributes) counts as tried under ``budget``: all do,
    except one found infeasible whose stored cost this budget allows."""
    if INFEASIBLE not in attrs or budget is None:
        return True
    cost = _cost(dict(attrs))
    return cost is None or bool(budget.violations(cost))


def _finite(candidates: Sequence[Candidate], choices: Sequence[str], space: Space) -> int | None:
    """How many configurations a space of linear heads only has (None with an MLP head, or
    with a sparse source, which always takes the MLP head: see :func:`_suggest_head`)."""
    if "mlp" in space.heads or any(c.sparse for c in candidates):
        return None
    layers = {c.name: len(c.layers) for c in candidates}
    return sum(math.prod(layers[m] for m in choice.split(SEPARATOR)) for choice in choices)


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random state is set from (seed, trial number) before each trial.

    A seeded sampler replays its random draws in every process: a resumed run would retrain
    the first run's configurations, and workers sharing a study would train the same ones
    side by side. Seeding each trial by its number (unique within a study) keeps a run
    reproducible from its seed and the study's history, and gives each trial draws of its
    own."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        state = np.random.SeedSequence([self._seed, trial.number]).generate_state(2)
        self._rng.rng.seed(int(state[0]))  # TPE's own draws
        self._random_sampler._rng.rng.seed(int(state[1]))  # its random start


def make_storage(url: str, heartbeat: float = 30.0) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a killed worker's trial is marked failed and retried
    once, never left RUNNING forever.

    A running trial's worker beats every ``heartbeat`` seconds; after three missed beats
    the next worker to start a trial fails it and queues its retry.
    """
    check_storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return _rdb_storage(url, heartbeat)
        except ImportError:  # Optuna re-raises a missing driver as a bare ImportError
            raise ConfigError(
                f"cannot open storage {url!r}: its database driver is not installed "
                "(PostgreSQL: pip install 'autolayer[postgres]')"
            ) from None
        except Exception as exc:  # noqa: BLE001 - drivers raise many types; report one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"cannot open storage {url!r}: {reason}") from None


def check_storage_url(url: str) -> None:
    """Refuse, before any work, a URL no study can live in: another scheme, or an SQLite
    URL without a file (``sqlite:///``, what ``sqlite:///$UNSET`` expands to), which
    SQLAlchemy opens as an in-memory database: the study would end with the run, and the
    export command the report prints could not find it."""
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        raise ConfigError(
            f"storage must be an sqlite://, postgresql:// or mysql:// URL; got {url!r}",
            params=("storage",),
        )
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: opening it says why in one line
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            f"storage {url!r} names no database file: the study would be kept in memory "
            "and lost when the run ends; give a file, such as sqlite:///study.db (is a "
            "variable in it unset?)",
            params=("storage",),
        )


def open_existing_storage(url: str, study_name: str | None = None) -> optuna.storages.BaseStorage:
    """A storage to read from: a SQLite file that does not exist is an error, not a new
    empty database left behind by a mistyped path."""
    missing = missing_sqlite_file(url)
    if missing:
        named = f"no study named {study_name!r}: " if study_name else ""
        raise ConfigError(f"{named}storage file {missing!r} does not exist")
    return make_storage(url)


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite storage whose file does not exist (opening it would create it),
    else None; read with SQLAlchemy's own parser (``sqlite+pysqlite:///x.db?timeout=60``)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: make_storage says so in one line
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.is_file() else str(path)


class _RetryUndecided(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a dead worker's trial, without the marks of what that attempt
    decided (surplus, repeat, infeasible) or of who ran it. Optuna copies the attributes
    into the retry; a copied surplus mark would leave the retry's trained head uncounted,
    and the study would train one more than its budget."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        decided = (SURPLUS, REPEAT, INFEASIBLE, "worker")
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in decided}
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != WORKER}
        super().__call__(study, trial)


# System attribute of a running trial: its worker, as :func:`this_worker` describes it
# (earlier versions recorded "host:pid", still read).
WORKER = "autolayer:worker"


def this_worker() -> dict:
    """This process, as :data:`WORKER` records it: its host and pid, and what makes the pid
    meaningful — the PID namespace (containers sharing a hostname each have their own) and
    the boot (pids restart at each one); ``None`` where the system does not say."""
    return {"host": socket.gethostname(), "pid": os.getpid(), **_pid_space()}


def _pid_space() -> dict:
    """The PID namespace's inode and the boot id of this process (Linux), else ``None``."""
    try:
        namespace: int | None = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    try:
        boot: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    return {"pid_ns": namespace, "boot_id": boot}


class _WorkerStorage(optuna.storages.RDBStorage):
    """An RDB storage whose running trials record their worker, and whose stale trials
    include two kinds that Optuna's heartbeat alone never finds, or finds late:

    - a trial whose worker ran in this process's PID space (same host, PID namespace and
      boot) and no longer exists (killed): stale at once, not after three missed beats (a
      resumed run would otherwise wait them out, adding a surplus trial each time);
    - a trial with no heartbeat at all (its worker was stopped or killed between creating
      it and its first beat), past the grace period, whoever its worker was: Optuna never
      calls a trial without a heartbeat stale, and every later run would wait on it forever.

    Optuna reads these through its storage's private methods (``_create_new_trial``,
    ``_get_stale_trial_ids``), which are overridden here.
    """

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        if template_trial is None:  # a new running trial: its worker stored with it
            template_trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, system_attrs={WORKER: this_worker()}
            )
            template_trial.state = optuna.trial.TrialState.RUNNING
            template_trial.datetime_start = datetime.now()
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_state_values(
        self,
        trial_id: int,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None = None,
    ) -> bool:
        taken = super().set_trial_state_values(trial_id, state=state, values=values)
        if taken and state == optuna.trial.TrialState.RUNNING:  # a queued trial, taken
            self.set_trial_system_attr(trial_id, WORKER, this_worker())
        return taken

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        stale += [i for i in self._never_beaten(study_id) if i not in stale]
        running = self.get_all_trials(
            study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        stale += [t._trial_id for t in running if t._trial_id not in stale and _gone_worker(t)]
        return stale

    def _never_beaten(self, study_id: int) -> list[int]:
        """Running trials with no heartbeat row, started longer ago than the grace period,
        whoever their worker: read as Optuna's own ``_get_stale_trial_ids`` reads heartbeats
        (the trial's rows of ``trial_heartbeats``); the start, stored in UTC, is compared with
        this host's clock."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        grace = self.grace_period or 2 * self.heartbeat_interval
        started_before = datetime.now() - timedelta(seconds=grace)
        trial = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            silent = (
                session.query(trial)
                .filter(trial.study_id == study_id)
                .filter(trial.state == optuna.trial.TrialState.RUNNING)
                .filter(~trial.heartbeats.any())
                .order_by(trial.trial_id)
                .all()
            )
            return [
                t.trial_id
                for t in silent
                if t.datetime_start is not None and t.datetime_start < started_before
            ]


def _gone_worker(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the worker that ran ``trial`` is known to be gone (see :func:`_gone`)."""
    # (the user attribute: a trial stored by an earlier version, before its system one)
    worker = trial.system_attrs.get(WORKER) or trial.user_attrs.get("worker")
    return _gone(worker) if worker else False


def _gone(worker: dict | str) -> bool:
    """Whether a worker ran in this process's PID space and its process no longer exists.
    A pid from anywhere else says nothing about a process here (two containers may share a
    hostname): such a worker is left to its heartbeat."""
    record = _worker_record(worker)
    pid = record.get("pid")
    if not _in_this_pid_space(record) or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def _worker_record(worker: dict | str) -> dict:
    """A :data:`WORKER` record as a dict; an earlier version's "host:pid" gives host and pid."""
    if isinstance(worker, dict):
        return worker
    host, _, pid = str(worker).rpartition(":")
    return {"host": host, "pid": int(pid) if pid.isdigit() else None}


def _in_this_pid_space(record: dict) -> bool:
    """Whether the record's pid would name a process here: same host, PID namespace and boot
    (a "host:pid" record of an earlier version says only its host, compared alone)."""
    mine = this_worker()
    known = [key for key in ("host", "pid_ns", "boot_id") if key in record]
    return "host" in known and all(record[key] == mine[key] for key in known)


# Workers that open a new storage together race to create its tables; each database says
# so in its own words (PostgreSQL: the first two; SQLite: the third).
_CREATION_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed")


def _rdb_storage(url: str, heartbeat: float, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open the storage; retry when workers starting together race to create its tables."""

    def open_storage() -> optuna.storages.RDBStorage:
        return _WorkerStorage(
            url,
            heartbeat_interval=max(1, round(heartbeat)),
            grace_period=max(2, round(3 * heartbeat)),
            heartbeat_stale_trial_callback=_RetryUndecided(max_retry=1),
        )

    for attempt in range(attempts - 1):
        try:
            return open_storage()
        except Exception as exc:
            if not any(words in str(exc) for words in _CREATION_RACE):
                raise
            time.sleep(0.5 * (attempt + 1))
    return open_storage()


def run_search(
    candidates: Sequence[Candidate],
    y_train: np.ndarray,
    y_val: np.ndarray,
    *,
    storage: str,
    study_name: str,
    budget: Budget | None = None,
    space: Space | None = None,
    metric: str = "accuracy",
    seed: int = 0,
    multi_objective: bool = False,
    prune: bool = True,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
    context: dict | None = None,
    identity: dict | None = None,
    first: Sequence[dict] = (),
    folds: Sequence[np.ndarray] = (),
) -> SearchResult:
    """Run (or resume) the study and return its trials, best first by validation metric.

    ``prune`` stops unpromising trials early (median of earlier trials' epoch curves);
    ``heartbeat`` is the seconds between a worker's signs of life (see :func:`make_storage`).
    ``context`` (what export needs) is stored in the study before its first trial.
    ``identity`` (data, models, features) joins the objectives, metric and search space in
    the study's signature: resuming a study whose signature differs is refused before any
    training, because its trials would not be comparable with the new ones.
    ``first`` are parameter sets (see :func:`guided_trials`) a new study runs before its
    sampler's own; those outside the space (a pair when ``max_models`` is 1) are skipped.
    ``folds`` (held-out rows of ``y_train``, one array per fold) judge every trial by
    cross-validation instead of ``y_val`` (see :func:`autolayer.fusion.cross_validate`).
    """
    budget, space = budget or Budget(), space or Space()
    n_classes = n_classes_of(y_train, y_val)
    check_feasible(candidates, budget, space, n_classes, len(y_train))
    objective = _Objective(
        candidates, y_train, y_val, budget, space, metric, seed, multi_objective, heartbeat, folds
    )
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    signature = {
        "objectives": directions,
        "metric": metric,
        **(identity or {}),
        "search space": space_signature(candidates, objective.choices, space),
    }
    opened = make_storage(storage, heartbeat)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
        if prune
        else optuna.pruners.NopPruner()
    )
    study, created = _create_or_load(opened, study_name, TrialSeededTPE(seed), pruner, directions)
    if not created:
        _await_signature(study)  # a worker that created it together with this one
        check_same_study(opened, storage, study_name, signature)
    if "signature" not in study.user_attrs:
        study.set_user_attr("metric", metric)
        if context is not None:
            study.set_user_attr("context", context)
        for params in first:
            if params["models"] in objective.choices:
                study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("signature", signature)  # last: other workers wait for it
    else:
        _requeue_anchor(study, first, budget)
    finite = _finite(candidates, objective.choices, space)
    before, drawn_before = trained_count(study, budget)
    if not created:  # said before any trial: a re-run does not start afresh
        logger.warning(
            "resuming study %r: %d of %d trials trained, %d to go",
            study_name,
            before,
            budget.n_trials,
            max(budget.n_trials - before, 0),
        )
    stops = [_stop_after(budget, finite, drawn_before)]
    decides = anchor_can_stop(budget, space, multi_objective)
    if decides:
        stops.append(_stop_if_unbeatable(budget, finite))
    study.set_user_attr(LIMITS, budget.limits)  # export judges the study by this run's
    if not decides and study.user_attrs.get(UNBEATABLE):
        study.set_user_attr(UNBEATABLE, False)  # not this run's rule: no stale "stopped"
    started = time.monotonic()
    # decided afresh on every run, the budget already met or not: the report reads the mark
    stopped = decides and anchor_unbeatable(study, budget, finite)
    if before < budget.n_trials and not stopped:
        _optimize(study, objective, budget.timeout, [*stops, *callbacks])
    with warnings.catch_warnings():  # experimental since Optuna 2.9, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is not left RUNNING
    after = trained_count(study, budget)[0]
    result = collect(study, storage, budget)
    return replace(
        result,
        notes=result.notes
        + _stop_notes(study, budget, after, time.monotonic() - started, finite, drawn_before),
        trained=after - before,
    )


def _create_or_load(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    directions: list[str],
) -> tuple[optuna.Study, bool]:
    """The study, and whether this worker created it: of workers starting a new study
    together, only its creator writes the signature and queues the guided trials."""
    kwargs = {"storage": storage, "study_name": name, "sampler": sampler, "pruner": pruner}
    try:
        return optuna.create_study(**kwargs, directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def _await_signature(study: optuna.Study, patience: float = 30.0) -> None:
    """Wait until the signature of a study another worker has just created is written (its
    creator writes it once the guided trials are queued). A study without one that has
    finished trials (made by an earlier version), or whose creator died before writing it,
    is not waited for: this worker writes it."""
    deadline = time.monotonic() + patience
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while "signature" not in study.user_attrs:
        if study.get_trials(deepcopy=False, states=finished) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _optimize(
    study: optuna.Study, objective: Callable, timeout: float | None, callbacks: Sequence[Callable]
) -> None:
    """``study.optimize``, going on when another worker took this one's trial from it.

    A worker whose heartbeat thread was starved of CPU for three beats looks dead: another
    worker fails its trial and queues a retry. When the live worker then reports its result,
    Optuna refuses it ("Cannot tell a FAIL trial") and ends the whole run with an internal
    assertion. The retry trains that configuration again, so this worker only says so and
    takes the next trial; any other error still ends the run.
    """
    ended: int | None = None  # the trial the objective last ended without an error of its own

    def tracked(trial: optuna.Trial) -> float | tuple[float, float]:
        nonlocal ended
        ended = None
        try:
            outcome = objective(trial)
        except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
            ended = trial.number  # pruned, or its result refused: it was failed
            raise
        except DivergedError as exc:  # its learning rate was too high: prune it, go on
            ended = trial.number
            logger.warning("trial %d: %s; it is pruned", trial.number, exc)
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        ended = trial.number
        return outcome

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        try:
            study.optimize(tracked, timeout=remaining, callbacks=callbacks)
            return
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: a trial it started is not left RUNNING
            _fail_own_running(study)
            raise
        except Exception:
            if ended is None or not _failed_by_another(study, ended):
                raise
            logger.warning(
                "trial %d was failed by another worker while this one trained it (no "
                "heartbeat for three beats: is the machine overloaded?); its retry trains "
                "it again",
                ended,
            )


def _fail_own_running(study: optuna.Study) -> None:
    """Fail this worker's running trials: interrupted before its objective started (Optuna
    fails a trial interrupted inside it), one would stay RUNNING without a heartbeat."""
    mine = this_worker()
    state = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if trial.system_attrs.get(WORKER) == mine:
            # (finished meanwhile, by another worker's stale check: skipped, or refused)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial.number, state=state.FAIL, skip_if_finished=True)


def _failed_by_another(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number``, which this worker's objective ended without an error of its
    own, is stored as failed: only another worker's stale-trial check fails such a trial."""
    [trial] = (t for t in study.get_trials(deepcopy=False) if t.number == number)
    return trial.state == optuna.trial.TrialState.FAIL


def _stop_notes(
    study: optuna.Study,
    budget: Budget,
    trained: int,
    seconds: float,
    finite: int | None,
    drawn_before: int = 0,
) -> tuple:
    """Why the search ended before its trials, when it did (the anchor's stop is said by
    the recommendation's reason)."""
    if trained >= budget.n_trials or study.user_attrs.get(UNBEATABLE):
        return ()
    if exhausted(study, finite, budget):
        return (
            f"all {finite} configurations of the space (linear heads) were tried: "
            f"{trained} of {budget.n_trials} trials trained",
        )
    if budget.timeout is not None and seconds >= budget.timeout:
        return (
            f"the timeout ({budget.timeout:g} s) ended the search after {trained} of "
            f"{budget.n_trials} trials",
        )
    if trained_count(study, budget)[1] - drawn_before >= 20 * budget.n_trials:
        return (
            f"{20 * budget.n_trials} draws ended the search after {trained} of "
            f"{budget.n_trials} trials: most configurations break the budget or repeat one",
        )
    return ()


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


def check_same_study(
    storage: optuna.storages.BaseStorage, url: str, study_name: str, signature: dict
) -> None:
    """Refuse to resume a stored study whose signature differs, naming the first difference."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return  # a new study
    stored = json_safe(storage.get_study_user_attrs(study_id).get("signature"))
    if stored is None:  # made before signatures: compare what it recorded
        directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
        attrs = storage.get_study_user_attrs(study_id)
        stored = {"objectives": directions, "metric": attrs.get("metric", signature["metric"])}
    for key, value in json_safe(signature).items():
        if key in stored and stored[key] != value:
            named, new, old = _first_difference(key, value, stored)
            raise ConfigError(
                f"study {study_name!r} in {url} differs in its {named}: stored "
                f"{_short(old)}, this command {_short(new)}; "
                "pass another study_name (or output folder) to start a new study",
                params=("study_name",),
            )


def _first_difference(key: str, value, stored: dict) -> tuple[str, object, object]:
    """Narrow a differing entry to its first differing part (``search space (layers)``),
    so the message names what changed rather than a long structure cut short."""
    old = stored[key]
    if isinstance(value, dict) and isinstance(old, dict):
        for part in [*value, *(k for k in old if k not in value)]:
            if value.get(part) != old.get(part):
                return f"{key} ({part})", value.get(part), old.get(part)
    return key, value, old


def json_safe(value):
    """As stored by Optuna (a JSON round trip), so tuples compare equal to lists."""
    return None if value is None else json.loads(json.dumps(value))


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "…"


def within_one_error(complete: Sequence[TrialSummary]) -> TrialSummary:
    """The best trial; under cross-validation, the smallest head (fewest parameters) whose
    score is within one standard error of the best's, over its folds: the one-standard-error
    rule. On a few dozen labels the scores of 30 trials differ mostly by noise (a standard
    error of 5-15 pt), and the top one is the luckiest, often an over-fitted head."""
    best = complete[0]
    scores = best.attrs.get("fold_scores")
    if not scores or len(scores) < 2:
        return best
    floor = best.values[0] - np.std(scores, ddof=1) / np.sqrt(len(scores))
    close = [t for t in complete if t.values[0] >= floor]
    return min(close, key=lambda t: (t.attrs.get("params", math.inf), -t.values[0], t.number))


def recommended(
    complete: Sequence[TrialSummary], context: dict | None, stopped: bool = False
) -> tuple[TrialSummary, str]:
    """The trial to recommend among ``complete`` (best first) and why, for the report.

    Under cross-validation with an anchor (few labels) and the anchor's trial among
    ``complete``: the anchor unless beaten clearly, with the reason either way
    (:func:`autolayer.anchor.against_anchor`). Otherwise the one-standard-error rule, which
    picks the top trial itself without folds; the reason is then empty when the top trial
    is chosen. ``stopped``: the search stopped after the anchor's trial, which no other
    could beat."""
    anchor = ((context or {}).get("options") or {}).get("anchor")
    info = (context or {}).get("models", {}).get(anchor) if anchor else None
    if info is not None:
        chosen = against_anchor(complete, anchor, info["n_hidden_states"] - 1, stopped=stopped)
        if chosen is not None:
            return chosen
    best, top = within_one_error(complete), complete[0]
    if best is top:
        return best, ""
    return best, (
        f"trial #{top.number} scored {top.values[0]:.4f}; #{best.number} is within one "
        "standard error of it with a smaller head: the one-standard-error rule"
    )


def collect(study: optuna.Study, storage: str, budget: Budget | None = None) -> SearchResult:
    """Read-only summary of a study: completed trials best first, and its Pareto front.

    Finished trials that break ``budget`` (default: the limits of the study's latest run)
    are left out of the choice and of the front, marked :data:`OVER_BUDGET`, and the notes
    say so: a resumed study, or its export, never recommends what the budget forbids."""
    budget = budget or _stored_budget(study)
    trials = [_summary(t) for t in study.get_trials(deepcopy=False)]
    complete = sorted(
        (t for t in trials if t.state == "COMPLETE"),
        key=lambda t: (-t.values[0], t.attrs.get("latency_ms", 0)),
    )
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet")
    over = [t for t in complete if _mark_over_budget(t, budget)]
    notes = tuple(_anchor_notes(study, trials, budget))
    if over:
        complete = [t for t in complete if OVER_BUDGET not in t.attrs]
        if not complete:
            nearest = min(over, key=lambda t: budget.shortfall(_cost(t.attrs)))
            raise ConfigError(
                f"no finished trial of study {study.study_name!r} meets this budget; the "
                f"nearest miss, #{nearest.number}, breaks: {nearest.attrs[OVER_BUDGET]}; run "
                "more trials, or relax the budget"
            )
        notes += (f"{len(over)} finished trial(s) of an earlier run break this budget: left out",)
    best, why = complete[0], ""
    if len(study.directions) == 1:
        attrs = study.user_attrs
        best, why = recommended(complete, attrs.get("context"), bool(attrs.get(UNBEATABLE)))
    anchor = _anchor_of(study)
    return SearchResult(
        study_name=study.study_name,
        storage=storage,
        best=best,
        trials=tuple(complete) + tuple(t for t in trials if t not in complete),
        pareto=_front(complete) if len(study.directions) > 1 else (complete[0],),
        why=why,
        anchor=len(study.directions) == 1 and anchor is not None and is_anchor(best, *anchor),
        notes=notes,
    )


def summarise_trial(study: optuna.Study, number: int) -> TrialSummary | None:
    """One trial by number (None if the study has none), marked :data:`OVER_BUDGET` when it
    breaks the limits of the study's latest run; unlike :func:`collect`, it never refuses a
    study none of whose trials meets them."""
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        return None
    trial = _summary(found[0])
    if trial.state == "COMPLETE":
        _mark_over_budget(trial, _stored_budget(study))
    return trial


def _mark_over_budget(trial: TrialSummary, budget: Budget | None) -> bool:
    """Mark a finished trial :data:`OVER_BUDGET` (with the limits it breaks) when its
    stored cost breaks ``budget``; whether it does."""
    if budget is None or not _breaks(trial, budget):
        return False
    trial.attrs[OVER_BUDGET] = "; ".join(budget.violations(_cost(trial.attrs)))
    return True


def _front(complete: Sequence[TrialSummary]) -> tuple[TrialSummary, ...]:
    """The trials no other beats on both objectives (higher metric, lower latency), among
    those ``complete`` (the budget's), in their order."""

    def dominated(t: TrialSummary) -> bool:
        (m, lat) = t.values[:2]
        return any(
            o.values[0] >= m and o.values[1] <= lat and (o.values[0] > m or o.values[1] < lat)
            for o in complete
        )

    return tuple(t for t in complete if not dominated(t))


def _stored_budget(study: optuna.Study) -> Budget | None:
    """The limits of the study's latest run (known kinds only), or None."""
    from autolayer.budgets import CONSTRAINTS

    limits = study.user_attrs.get(LIMITS) or {}
    known = {k: v for k, v in limits.items() if k in CONSTRAINTS}
    return Budget(**known) if known else None


def _cost(attrs: dict) -> Cost | None:
    """A trial's stored cost (None for a trial recorded before costs were stored)."""
    try:
        return Cost(**{f.name: attrs[f.name] for f in fields(Cost)})
    except KeyError:
        return None


def _breaks(trial: TrialSummary, budget: Budget) -> bool:
    cost = _cost(trial.attrs)
    return cost is not None and bool(budget.violations(cost))


def _anchor_notes(
    study: optuna.Study, trials: Sequence[TrialSummary], budget: Budget | None
) -> list[str]:
    """What the report must say about the anchor rule when it did not apply: two
    objectives, or an anchor that breaks the present budget (an earlier run's limits do
    not count) and never finished within it."""
    anchor = _anchor_of(study)
    if anchor is None:
        return []
    if len(study.directions) > 1:
        return [
            "the anchor rule applies to single-objective searches only: with two objectives "
            "the most accurate trial is recommended, and the Pareto front shown"
        ]
    name, last = anchor
    anchors = [t for t in trials if is_anchor(t, name, last)]
    if any(t.state == "COMPLETE" and not (budget and _breaks(t, budget)) for t in anchors):
        return []
    broken = [
        "; ".join(budget.violations(_cost(t.attrs)))
        if budget and _cost(t.attrs)
        else t.attrs.get(INFEASIBLE, "")  # a study that stored no limits: as its run judged
        for t in anchors
    ]
    broken = [b for b in broken if b]
    if broken:
        return [f"the anchor ({name}'s last layer, linear head) breaks the budget ({broken[0]})"]
    return [
        f"the anchor ({name}'s last layer, linear head) has not finished in this study: "
        "trials were ranked without it"
    ]
