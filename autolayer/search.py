"""The Optuna study: which models, which layer of each, which fusion operator, what head.

The space is kept small on purpose: each model offers only its scorer's top-k layers, so a
few dozen trials cover it. Each trial's costs (inference latency of the backbones up to the
chosen layers, memory of weights and fused features, head parameters) are computed *before*
training, and a configuration that breaks the budget is never trained: it is recorded as a
pruned trial with the reason. Trials report their per-epoch validation metric so a median
pruner stops hopeless ones early. Studies live in an Optuna storage (SQLite file by default),
so re-running the same command resumes, and several workers can share one study.

This module holds the objective and the driver; the space and its costs are in
:mod:`autolayer.space`, the storage and its workers in :mod:`autolayer.storage`, and reading
a study and choosing what to recommend in :mod:`autolayer.selection`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import optuna

from autolayer.anchor import HEAD as ANCHOR_HEAD
from autolayer.anchor import is_anchor, unbeatable
from autolayer.budgets import Budget
from autolayer.errors import ConfigError, DivergedError
from autolayer.heads import Head, cross_validate, head_class, make_head
from autolayer.options import Options
from autolayer.rungs import Ladder, Rungs
from autolayer.selection import (
    BASELINE,
    INFEASIBLE,
    LIMITS,
    REPEAT,
    RUNG_ROWS,
    RUNGS,
    SURPLUS,
    TASK_PARAMS,
    UNBEATABLE,
    VAL_ROWS,
    SearchResult,
    anchor_of,
    collect,
    counts,
    stored_cost,
    summary,
    trained_count,
)
from autolayer.space import (
    Candidate,
    Space,
    baseline_trials,
    check_feasible,
    cost_of,
    finite_configurations,
    head_param,
    heads_for,
    space_notes,
    space_signature,
    split_models,
    subsets,
)
from autolayer.storage import WORKER, make_storage, this_worker
from autolayer.task import Task

logger = logging.getLogger("autolayer")


class _Objective:
    """Callable objective over the fixed candidates; holds nothing Optuna has to pickle."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        y_train: np.ndarray,
        y_val: np.ndarray,
        budget: Budget,
        space: Space,
        options: Options,
        task: Task,
        multi_objective: bool,
        wait: float = 30.0,
        folds: Sequence[np.ndarray] = (),
        rungs: Ladder | None = None,
    ) -> None:
        self.wait = wait
        self.rungs = rungs.rows if rungs is not None else ()
        self.by_name = {c.name: c for c in candidates}
        self.names = list(self.by_name)
        self.choices = subsets(self.names, budget.max_models)
        self.y_train, self.y_val, self.folds = y_train, y_val, tuple(folds)
        self.n_outputs = task.n_outputs(y_train, y_val)
        self.budget, self.space, self.options, self.task = budget, space, options, task
        self.multi_objective = multi_objective

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        chosen = [
            self.by_name[n]
            for n in split_models(trial.suggest_categorical("models", self.choices), self.names)
        ]
        layers = [int(trial.suggest_categorical(f"layer:{c.name}", c.layers)) for c in chosen]
        kind = _suggest_head(trial, self.space, chosen)
        trial.set_user_attr("head", kind)  # a param only where it was a choice
        params = head_class(kind).suggest(trial, self.space, chosen)
        trial.set_user_attr("head_params", params)
        cost = cost_of(chosen, layers, kind, params, self.n_outputs, len(self.y_train))
        for key, value in cost.as_dict().items():
            trial.set_user_attr(key, value)
        broken = self.budget.violations(cost)
        if broken:
            trial.set_user_attr(INFEASIBLE, "; ".join(broken))
            raise optuna.TrialPruned("infeasible: " + "; ".join(broken))
        finite = head_class(kind).n_configurations(self.space) is not None
        earlier = _same_settings(trial, self.budget) if finite else None
        if earlier is not None:
            trial.set_user_attr(REPEAT, earlier)
            raise optuna.TrialPruned(f"repeat: trial {earlier} trained this {kind} head")
        baseline = bool(trial.user_attrs.get(BASELINE))  # outside the budget: never surplus
        if (
            not baseline
            and slots_taken(trial.study, trial.number, self.budget) >= self.budget.n_trials
        ):
            # Other workers' running trials fill the budget: wait for them instead of
            # training one too many. If one of them died, its retry will need a worker.
            trial.set_user_attr(SURPLUS, True)
            time.sleep(self.wait)
            raise optuna.TrialPruned("surplus: running trials of other workers fill the budget")
        head = make_head(kind, params, task=self.task, metric=self.options.metric)
        train = [c.features(layer, "train") for c, layer in zip(chosen, layers, strict=True)]
        seed = self.options.seed
        if self.folds:
            result = cross_validate(
                head, train, self.y_train, self.folds, seed=seed, n_outputs=self.n_outputs
            )
            epochs_run = len(result.curve)
            trial.set_user_attr("fold_scores", list(result.fold_scores))
            trial.set_user_attr("n_rows", sum(len(fold) for fold in self.folds))  # held out
        else:
            val = [c.features(layer, "val") for c, layer in zip(chosen, layers, strict=True)]
            climbs = self.climbs(baseline)
            if climbs:
                self._climb(trial, head, train, val)  # raises TrialPruned below the top
            started = time.process_time()
            result = head.fit(
                train,
                self.y_train,
                val,
                self.y_val,
                seed=seed,
                on_epoch=None
                if self.multi_objective or baseline or climbs
                else _pruning_hook(trial),
                n_outputs=self.n_outputs,
            )
            if climbs:
                _record_rung(trial, len(self.y_train), result.best_val_metric, started)
            epochs_run = len(result.history)
            # the one-standard-error rule's n; not "n_rows", which the anchor's rules read
            # as every held-out row of a cross-validation
            trial.set_user_attr(VAL_ROWS, len(self.y_val))
            tuned = self._tuned(head, chosen, layers)
            if tuned:
                trial.set_user_attr(TASK_PARAMS, tuned)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("train_seconds", result.train_seconds)
        if not (self.multi_objective or baseline or self.climbs(baseline)) and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epochs_run - 1}")
        if self.multi_objective:
            return result.best_val_metric, cost.latency_ms
        return result.best_val_metric

    def climbs(self, baseline: bool) -> bool:
        """Whether a trial climbs the rungs of rows: not a baseline (it must see every row,
        outside the budget), not under cross-validation or two objectives."""
        return bool(self.rungs) and not (baseline or self.folds or self.multi_objective)

    def _climb(self, trial: optuna.Trial, head: Head, train: list, val: list) -> None:
        """Fit a copy of ``head`` on each rung's rows below the top, report its validation
        metric at step = the rung's rows, and stop the trial where the successive-halving
        pruner says it is not among the rung's best (see :mod:`autolayer.rungs`)."""
        for rows in self.rungs:
            started = time.process_time()
            fit = head.clone().fit(
                [x[rows] for x in train],
                self.y_train[rows],
                val,
                self.y_val,
                seed=self.options.seed,
                n_outputs=self.n_outputs,
            )
            _record_rung(trial, len(rows), fit.best_val_metric, started)
            trial.report(fit.best_val_metric, len(rows))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {len(rows)} rows")

    def _tuned(self, head: Head, chosen: Sequence[Candidate], layers: Sequence[int]) -> dict:
        """The decision rule of the trial's task fitted on its head's validation
        probabilities (a multi-label task's thresholds), as the config records it: the
        trial's value stays the untuned task's score, comparable across trials, and the
        exported head decides by the fitted rule. Empty for a task that tunes nothing
        (single-label: no prediction spent, nothing stored, so its studies are as before)."""
        if type(self.task).tuned is Task.tuned:
            return {}
        val = [c.features(layer, "val") for c, layer in zip(chosen, layers, strict=True)]
        proba = head.predict_proba(val)
        return self.task.tuned(proba, self.y_val, self.options.metric).params()


def _record_rung(trial: optuna.Trial, rows: int, value: float, started: float) -> None:
    """Add a rung to the trial's record: ``[rows, validation metric, CPU seconds]``."""
    done = trial.user_attrs.get(RUNGS, [])
    trial.set_user_attr(RUNGS, [*done, [rows, value, time.process_time() - started]])


def _suggest_head(trial: optuna.Trial, space: Space, chosen: Sequence[Candidate]) -> str:
    """The head of a trial: a choice only where it is one (late fusion never takes one
    model: see :func:`autolayer.space.heads_for`), under a name of its choices'
    (:func:`autolayer.space.head_param`)."""
    heads, name = heads_for(space, chosen), head_param(space, chosen)
    return heads[0] if name is None else trial.suggest_categorical(name, heads)


def _pruning_hook(trial: optuna.Trial) -> Callable[[int, float], bool]:
    def on_epoch(epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()

    return on_epoch


def _same_settings(trial: optuna.Trial, budget: Budget) -> int | None:
    """The number of a finished trial with the same parameters, if any: asked for a head
    of finitely many settings. The linear head has none to vary, so TPE often proposes one
    again (6 of 10 trials on a latency budget that allowed little else); training it twice
    would only spend the budget."""
    state = optuna.trial.TrialState  # pruned on a rung: its rung value would be the same
    states = (state.COMPLETE, state.RUNNING, state.PRUNED)
    done = trial.study.get_trials(deepcopy=False, states=states)
    same = (t for t in done if t.number < trial.number and t.params == trial.params)
    return next((t.number for t in same if counts(t.user_attrs, budget, baselines=True)), None)


def slots_taken(study: optuna.Study, number: int, budget: Budget | None = None) -> int:
    """Trials trained, plus trials still to train that were created before trial ``number``
    (within the budget: baselines are not, see :func:`autolayer.selection.counts`).

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


def anchor_can_stop(budget: Budget, space: Space, multi_objective: bool = False) -> bool:
    """Whether an unbeatable anchor may end the search (and spare the other models'
    extraction): only one objective (a Pareto front has room beside it), the linear head
    offered (the anchor's), and no timeout (the margin assumes every trial of the budget
    runs; fewer trials would need a smaller one)."""
    return not multi_objective and ANCHOR_HEAD in space.heads and budget.timeout is None


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
    :func:`autolayer.space.finite_configurations`); the study's :data:`UNBEATABLE` mark
    follows the answer. Read from the storage, so a resumed run, or another worker, sees
    what an earlier one found; decided afresh each time, because a resumed run may bring
    another budget."""
    anchor = anchor_of(study)
    found = False
    if anchor is not None:
        name, last = anchor
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        found = any(
            is_anchor(summary(t), name, last) and _out_of_reach(t, budget, finite) for t in complete
        )
    if found != bool(study.user_attrs.get(UNBEATABLE)):
        study.set_user_attr(UNBEATABLE, found)
    return found


def _anchor_params(study: optuna.Study, first: Sequence[dict]) -> dict | None:
    """The anchor's trial among ``first`` (None: the study has no anchor, or none there)."""
    anchor = anchor_of(study)
    if anchor is None:
        return None
    name, last = anchor
    return next(
        (p for p in first if p.get("models") == name and p.get(f"layer:{name}") == last), None
    )


def _queue_order(study: optuna.Study, first: Sequence[dict], baselines: Sequence[dict]) -> list:
    """The trials a new study runs first: the anchor's (few labels), then the baselines,
    then the rest of ``first``. The anchor is the few-label baseline every other trial,
    the baselines included, is judged against; when none of them could beat it the search
    stops after it at once, as the early skip of :func:`autolayer.candidates.prepare`
    would have had it decided before extraction."""
    anchor = _anchor_params(study, first)
    head = [] if anchor is None else [anchor]
    return [*head, *baselines, *(p for p in first if p is not anchor)]


def _requeue(
    study: optuna.Study, first: Sequence[dict], budget: Budget, baselines: Sequence[dict]
) -> None:
    """Queue again, on a resumed study, the anchor's trial and every baseline's (marked
    :data:`BASELINE`) of which it holds none that was trained or will run under ``budget``:
    an earlier run's tighter limits made it infeasible, or a worker's trial limit left the
    anchor untrained (surplus). Without the anchor every other trial would go unjudged by
    the anchor rule; without a baseline the recommendation could fall below it."""
    anchor = _anchor_params(study, first)
    for params in _queue_order(study, [] if anchor is None else [anchor], baselines):
        if not _will_have_run(study, params, budget):
            attrs = {BASELINE: True} if params in baselines else None
            study.enqueue_trial(params, user_attrs=attrs)


def _will_have_run(study: optuna.Study, params: dict, budget: Budget) -> bool:
    """Whether the study holds a trial of ``params`` (drawn or queued) that was trained
    (a baseline's too), waits or runs, or breaks ``budget`` too (no use queuing it)."""
    state = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        if t.params != params and t.system_attrs.get("fixed_params") != params:
            continue
        if t.state in (state.WAITING, state.RUNNING):
            return True
        if t.state in (state.COMPLETE, state.PRUNED) and counts(t.user_attrs, baselines=True):
            return True
        if INFEASIBLE in t.user_attrs and _still_tried(t.user_attrs, budget):
            return True
    return False


def _out_of_reach(trial: optuna.trial.FrozenTrial, budget: Budget, finite: int | None) -> bool:
    rows = trial.user_attrs.get("n_rows")  # recorded by cross-validated trials
    if not rows or not unbeatable(trial.values[0], rows, budget.n_trials, configurations=finite):
        return False
    cost = stored_cost(trial.user_attrs)
    return cost is not None and not budget.violations(cost)


def _stop_after(
    budget: Budget, finite: int | None = None, drawn_before: int = 0
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop once ``budget.n_trials`` trials were trained (finished or pruned by the pruner).

    Infeasible and repeated trials cost nothing and do not count, nor do the baselines
    (trained outside the budget: :func:`autolayer.selection.counts`), but at most
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
    cost = stored_cost(dict(attrs))
    return cost is None or bool(budget.violations(cost))


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


def run_search(
    candidates: Sequence[Candidate],
    y_train: np.ndarray,
    y_val: np.ndarray,
    *,
    task: Task,
    storage: str,
    study_name: str,
    budget: Budget | None = None,
    space: Space | None = None,
    options: Options | None = None,
    multi_objective: bool = False,
    prune: bool = True,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
    context: dict | None = None,
    identity: dict | None = None,
    first: Sequence[dict] = (),
    folds: Sequence[np.ndarray] = (),
    rungs: Ladder | None = None,
) -> SearchResult:
    """Run (or resume) the study and return its trials, best first by ``options.metric``
    (the heads seeded by ``options.seed``), for ``task`` (the one
    :func:`autolayer.candidates.prepare` built from ``options.task``: every trial's head
    trains for it).

    ``prune`` stops unpromising trials early (median of earlier trials' epoch curves);
    ``heartbeat`` is the seconds between a worker's signs of life (see
    :func:`autolayer.storage.make_storage`).
    ``context`` (what export needs) is stored in the study before its first trial.
    ``identity`` (data, models, features) joins the objectives, metric and search space in
    the study's signature: resuming a study whose signature differs is refused before any
    training, because its trials would not be comparable with the new ones.
    ``first`` are parameter sets (see :func:`autolayer.space.guided_trials`) a new study
    runs before its sampler's own; those outside the space (a pair when ``max_models`` is
    1) are skipped. Before them, the anchor's trial aside (see :func:`_queue_order`), it
    runs the space's baselines (:func:`autolayer.space.baseline_trials`), marked
    :data:`BASELINE`, outside the budget's ``n_trials``; like ``first``, queued once, by the
    worker that creates the study, and again by a resumed run when never trained (see
    :func:`_requeue`).
    ``folds`` (held-out rows of ``y_train``, one array per fold) judge every trial by
    cross-validation instead of ``y_val`` (see :func:`autolayer.heads.cross_validate`).
    ``rungs`` (samples of ``y_train``'s rows) make a trial train on each before all of
    them, stopped where it is not among its rung's best (see :mod:`autolayer.rungs`); with
    ``prune`` the pruner is then successive halving over rows instead of the epochs' median.
    """
    budget, space = budget or Budget(), space or Space()
    options = (options or Options()).for_task(task)
    objective = _Objective(
        candidates,
        y_train,
        y_val,
        budget,
        space,
        options,
        task,
        multi_objective,
        heartbeat,
        folds,
        rungs if prune else None,
    )
    check_feasible(candidates, budget, space, objective.n_outputs, len(y_train))
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    signature = {
        "objectives": directions,
        "metric": options.metric,
        **(identity or {}),
        "search space": space_signature(candidates, objective.choices, space),
    }
    opened = make_storage(storage, heartbeat)
    if rungs is not None and prune and multi_objective:
        logger.warning(
            "no rungs of rows with two objectives (Optuna prunes single objectives only): "
            "every trial trains on all rows"
        )
    climbing = objective.climbs(baseline=False)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()  # climbing: set below
    if prune and not climbing:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    sampler = TrialSeededTPE(options.seed)
    study, created = _create_or_load(opened, study_name, sampler, pruner, directions)
    if not created:
        _await_signature(study)  # a worker that created it together with this one
        check_same_study(opened, storage, study_name, signature)
    baselines = baseline_trials(candidates, space)
    if "signature" not in study.user_attrs:
        study.set_user_attr("metric", options.metric)
        if context is not None:
            study.set_user_attr("context", context)
        for params in _queue_order(study, first, baselines):
            if params["models"] in objective.choices:
                attrs = {BASELINE: True} if params in baselines else None
                study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        study.set_user_attr("signature", signature)  # last: other workers wait for it
    else:
        _requeue(study, first, budget, baselines)
    for note in space_notes(candidates, objective.choices, space):
        logger.warning(note)
    if climbing:  # the study's own rungs, known once it is open
        kept = _study_rungs(study, rungs, y_train, task, options.seed)
        objective.rungs, study.pruner = kept.rows, kept.pruner()
    finite = finite_configurations(candidates, objective.choices, space)
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


def _study_rungs(
    study: optuna.Study, ladder: Ladder, y_train: np.ndarray, task: Task, seed: int
) -> Ladder:
    """The rungs a run climbs: the study's own, recorded by the run that first climbed in
    it. A resumed run or another worker with another ``--rung-rows`` keeps them, and says
    so: the successive-halving pruner compares a rung's values by the rung's index, so
    values of heads trained on other rows would be ranked together (a smaller first rung
    would lose every comparison, a larger one win them)."""
    wanted = {"sizes": [len(rows) for rows in ladder.rows], "factor": ladder.factor}
    stored = study.user_attrs.get(RUNG_ROWS)
    if stored is None:
        study.set_user_attr(RUNG_ROWS, wanted)
        return ladder
    if stored == wanted:
        return ladder
    logger.warning(
        "study %r ranks its trials on rungs of %s rows; this run keeps them (not %s): pass "
        "another study name to rank on these",
        study.study_name,
        _rows_list(stored["sizes"]),
        _rows_list(wanted["sizes"]),
    )
    kept = Rungs(min_rows=stored["sizes"][0], factor=stored["factor"])
    return kept.ladder(y_train, task.strata(y_train), seed) or ladder


def _rows_list(sizes: list[int]) -> str:
    return ", ".join(f"{size:,}" for size in sizes)


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
            f"all {finite} configurations of the space (heads of one setting each) were tried: "
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
            hint = ""
            if named == "search space (heads)":
                old = old or ["mlp"]  # not stored: the MLP alone (see space_signature)
                hint = _gained_heads(new, old)
            raise ConfigError(
                f"study {study_name!r} in {url} differs in its {named}: stored "
                f"{_short(old)}, this command {_short(new)}{hint}; "
                "pass another study_name (or output folder) to start a new study",
                params=("study_name",),
            )


def _gained_heads(new: list, old: list) -> str:
    """Why the heads of a study made with an earlier version's default space differ, and
    how to resume it; empty when this command's heads are not the default's."""
    gained = [h for h in new if h not in old]
    if new != list(Space().heads) or not gained:
        return ""
    names = " and ".join(gained)
    return (
        f" (the default space gained the {names} head{'s' * (len(gained) > 1)} in this "
        f"version; start a new study, or pass --heads {','.join(old)} / "
        f"Space(heads={tuple(old)!r}))"
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
