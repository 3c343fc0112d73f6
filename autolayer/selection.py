"""Reading a study: a read-only summary of each trial, which trials count against the
budget, and which configuration to recommend (best first, the one-standard-error and anchor
rules, the Pareto front). The report reads what is here; nothing here trains a head."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import optuna

from autolayer.anchor import against_anchor, is_anchor
from autolayer.budgets import Budget, Cost
from autolayer.errors import ConfigError
from autolayer.heads import head_class
from autolayer.space import split_models

# Trial attributes of configurations that were never trained (they cost no budget).
INFEASIBLE = "infeasible"  # breaks a budget: its reasons
SURPLUS = "surplus"  # other workers' running trials already fill the budget
REPEAT = "repeat_of"  # a linear head on layers already tried: the earlier trial's number
OVER_BUDGET = "over_budget"  # (in a summary only) why a finished trial breaks this budget
CHEAPER = 0.5  # a near-tie replaces the best only at this share of its latency or memory
BASELINE = "baseline"  # a simple baseline's trial, outside the trial budget
VAL_ROWS = "val_rows"  # the validation rows a trial was judged on (none under folds)
UNBEATABLE = "anchor_unbeatable"  # study attribute: the search stopped after the anchor
LIMITS = "budget_limits"  # study attribute: the limits of the latest run's budget
TASK_PARAMS = "task_params"  # the task's decision rule fitted on validation (thresholds)
RUNGS = "rungs"  # [rows, validation metric, CPU seconds] of each rung a trial trained on
RUNG_ROWS = "rung_rows"  # study attribute: the rung sizes its latest run with rungs climbed


@dataclass(frozen=True)
class TrialSummary:
    """A read-only view of one trial, enough to rank, report and export it: its models
    and layers, and its head's kind and full parameters (``head_params``)."""

    number: int
    state: str
    values: tuple[float, ...] | None
    models: tuple[str, ...]
    layers: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
    head: str = "mlp"
    head_params: dict = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    @property
    def operator(self) -> str:
        """The fusion operator of a head that has one ("concat" otherwise)."""
        return self.head_params.get("operator", "concat")

    @property
    def width(self) -> int:
        """The projection width of a head that has one (0 otherwise)."""
        return int(self.head_params.get("width", 0))

    @property
    def lr(self) -> float:
        """The learning rate of a head trained by gradient (0.0 otherwise)."""
        return float(self.head_params.get("lr", 0.0))


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
    baselines: tuple[TrialSummary, ...] = ()  # the finished baseline trials, best first


def summary(trial: optuna.trial.FrozenTrial, context: dict | None = None) -> TrialSummary:
    """A read-only view of one stored trial (see :class:`TrialSummary`); ``context`` is the
    study's, which completes the head parameters of a trial stored without them."""
    params = trial.params
    # the models whose layers are suggested: none while another worker is still suggesting
    names = [key.removeprefix("layer:") for key in params if key.startswith("layer:")]
    models = split_models(params["models"], names) if "models" in params else ()
    kind = params.get("head", trial.user_attrs.get("head", "mlp"))
    head_params = trial.user_attrs.get("head_params")
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        values=tuple(trial.values) if trial.values else None,
        models=models,
        layers=tuple(int(params[f"layer:{m}"]) for m in models),
        attrs=dict(trial.user_attrs),
        head=kind,
        head_params=_stored_before(params, kind, context) if head_params is None else head_params,
    )


def _stored_before(params: Mapping, kind: str, context: dict | None) -> dict:
    """The head parameters of a trial stored before trials recorded them: its searched
    operator, width and lr (operator "concat" for one model) over the study context's fixed
    ones (``head``: hidden, dropout, batch_size), keeping the fields ``kind`` takes (the
    linear head takes none)."""
    taken = head_class(kind).check_params({})  # every field, at its default
    stored = {
        "operator": "concat",
        **((context or {}).get("head") or {}),
        **{k: params[k] for k in ("operator", "width", "lr") if k in params},
    }
    return {k: v for k, v in stored.items() if k in taken}


def counts(attrs: Mapping, budget: Budget | None = None, *, baselines: bool = False) -> bool:
    """Whether a trial (by its user attributes) used the budget: infeasible, surplus and
    repeated trials are never trained, a baseline's is trained outside the budget (counted
    only when ``baselines``: to tell whether a configuration was trained at all), and a
    trial whose stored cost breaks ``budget`` (an earlier run's, under a looser one) is not
    counted against it."""
    if INFEASIBLE in attrs or SURPLUS in attrs or REPEAT in attrs:
        return False
    if attrs.get(BASELINE) and not baselines:
        return False
    cost = stored_cost(attrs) if budget is not None else None
    return cost is None or not budget.violations(cost)


def trained_count(study: optuna.Study, budget: Budget | None = None) -> tuple[int, int]:
    """(trials trained within ``budget``, trials finished): infeasible, surplus and repeated
    trials finish untrained (see :func:`counts`)."""
    done = study.get_trials(
        deepcopy=False,
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
    )
    counted = [t for t in done if counts(t.user_attrs, budget)]
    return len(counted), len(done) - sum(SURPLUS in t.user_attrs for t in done)


def anchor_of(study: optuna.Study) -> tuple[str, int] | None:
    """The study's anchor and its last layer, from the stored context (None: no anchor)."""
    context = study.user_attrs.get("context") or {}
    name = (context.get("options") or {}).get("anchor")
    info = context.get("models", {}).get(name) if name else None
    return None if info is None else (name, info["n_hidden_states"] - 1)


def within_one_error(complete: Sequence[TrialSummary]) -> TrialSummary:
    """The cheapest of the near-ties of the best trial (``complete[0]``): the
    one-standard-error rule. Near-ties score at least ``max(best - SE, best baseline)``:
    within one standard error of the best, and never below the best finished baseline
    (:data:`BASELINE`), so the recommendation is never below any baseline on validation.
    The best itself when no standard error is known (a trial stored before its validation
    rows were).

    The error is the best's over its cross-validation folds, or without folds a proportion's
    over its validation rows, sqrt(p(1 - p) / n). Why: the top score among dozens of trials
    is partly luck. On a few dozen labels the scores of 30 trials differ mostly by noise (a
    standard error of 5-15 pt) and the top one is often an over-fitted head; on a full
    validation split one document of 312 made a 2,700 times slower fusion "better" than
    TF-IDF alone. Within noise the cheaper configuration is as good a bet and costs less to
    run.

    Cheapest: without folds by (latency, memory, parameters), what a user pays for on every
    text, among the near-ties that cost at most half the best's latency or memory (a few
    per cent of latency does not pay for a lower expected score: :func:`_much_cheaper`);
    under folds (few labels) by the fewest head parameters, the order measured in
    ``studies/results/fewshot/demo``, where the smaller head over-fits a handful of labels
    less. Then the higher score, then the earlier trial."""
    best = complete[0]
    error = standard_error(best)
    if error is None:
        return best
    baselines = [t.values[0] for t in complete if t.attrs.get(BASELINE)]
    floor = max([best.values[0] - error, *baselines])
    folds = bool(best.attrs.get("fold_scores"))
    close = [t for t in complete if t.values[0] >= floor and (folds or _much_cheaper(t, best))]
    return min([best, *close], key=lambda t: (*_cost_order(t, folds), -t.values[0], t.number))


def _much_cheaper(trial: TrialSummary, best: TrialSummary) -> bool:
    """Whether ``trial`` runs at most :data:`CHEAPER` of ``best``'s latency or memory, and
    at no more of either: what leaving the best's score for a near-tie must buy. On R8
    (1,097 validation documents) the rule without it left the best, mpnet L11 + TF-IDF
    (97.27 %), for mpnet L10 alone (96.90 %, within one error) at 91 % of its latency:
    97.21 against 97.85 % on test (``studies/bench/RESULTS.md``, "Baselines")."""
    pairs = [(trial.attrs.get(k), best.attrs.get(k)) for k in ("latency_ms", "memory_mb")]
    if any(mine is None or theirs is None or mine > theirs for mine, theirs in pairs):
        return False
    return any(mine <= CHEAPER * theirs for mine, theirs in pairs)


def _cost_order(trial: TrialSummary, folds: bool) -> tuple[float, ...]:
    """The one-standard-error rule's cheapest first (see :func:`within_one_error`)."""
    return (float(trial.attrs.get("params", math.inf)),) if folds else cost_key(trial)


def standard_error(trial: TrialSummary) -> float | None:
    """The standard error of a trial's score: over its folds (two or more), else as a
    proportion of its validation rows (for macro-F1 a heuristic of the right size, as in
    :func:`autolayer.anchor.difference_z`); None when neither was recorded."""
    scores = trial.attrs.get("fold_scores")
    if scores and len(scores) >= 2:
        return float(np.std(scores, ddof=1) / np.sqrt(len(scores)))
    rows = trial.attrs.get(VAL_ROWS)
    if not rows:
        return None
    p = min(max(trial.values[0], 0.0), 1.0)
    return math.sqrt(p * (1 - p) / rows)


def cost_key(trial: TrialSummary) -> tuple[float, float, float]:
    """What running a trial's configuration costs, cheapest first: latency, memory,
    parameters (unknown: last)."""
    return tuple(float(trial.attrs.get(k, math.inf)) for k in ("latency_ms", "memory_mb", "params"))


def recommended(
    complete: Sequence[TrialSummary], context: dict | None, stopped: bool = False
) -> tuple[TrialSummary, str]:
    """The trial to recommend among ``complete`` (best first) and why, for the report.

    Under cross-validation with an anchor (few labels) and the anchor's trial among
    ``complete``: the anchor unless beaten clearly, with the reason either way
    (:func:`autolayer.anchor.against_anchor`). Otherwise the one-standard-error rule
    (:func:`within_one_error`); the reason is then empty when the top trial is chosen.
    ``stopped``: the search stopped after the anchor's trial, which no other could beat."""
    anchor = ((context or {}).get("options") or {}).get("anchor")
    info = (context or {}).get("models", {}).get(anchor) if anchor else None
    if info is not None:
        chosen = against_anchor(complete, anchor, info["n_hidden_states"] - 1, stopped=stopped)
        if chosen is not None:
            return chosen
    best, top = within_one_error(complete), complete[0]
    if best is top:
        return best, ""
    gain = 100 * (top.values[0] - best.values[0])
    return best, (
        f"the one-standard-error rule: #{best.number} scored {best.values[0]:.4f}, within one "
        f"standard error ({100 * standard_error(top):.1f} pt) of #{top.number}'s "
        f"{top.values[0]:.4f}, {_cheaper(best, top)}; #{top.number}'s extra cost would buy "
        f"{gain:+.2f} pt, within noise"
    )


def _cheaper(chosen: TrialSummary, top: TrialSummary) -> str:
    """How much cheaper ``chosen`` is than ``top``, by the first cost that differs (under
    folds, parameters first: the rule's own order there, see :func:`within_one_error`)."""
    costs = [("latency_ms", "latency"), ("memory_mb", "memory"), ("params", "parameters")]
    if top.attrs.get("fold_scores"):
        costs.insert(0, costs.pop())
    for key, what in costs:
        mine, theirs = chosen.attrs.get(key), top.attrs.get(key)
        if mine is None or theirs is None or not mine < theirs:
            continue
        if mine <= 0:
            return f"at none of its {what}"
        ratio = theirs / mine
        share = f"{100 / ratio:.0f} %" if ratio < 2 else f"1/{ratio:,.{int(ratio < 10)}f}"
        return f"at {share} of its {what}"
    return "at no higher cost"


def collect(study: optuna.Study, storage: str, budget: Budget | None = None) -> SearchResult:
    """Read-only summary of a study: completed trials best first, its Pareto front, and
    its finished baselines (best first).

    Finished trials that break ``budget`` (default: the limits of the study's latest run)
    are left out of the choice and of the front, marked :data:`OVER_BUDGET`, and the notes
    say so: a resumed study, or its export, never recommends what the budget forbids."""
    budget = budget or _stored_budget(study)
    context = study.user_attrs.get("context")
    trials = [summary(t, context) for t in study.get_trials(deepcopy=False)]
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
            nearest = min(over, key=lambda t: budget.shortfall(stored_cost(t.attrs)))
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
    anchor = anchor_of(study)
    return SearchResult(
        study_name=study.study_name,
        storage=storage,
        best=best,
        trials=tuple(complete) + tuple(t for t in trials if t not in complete),
        pareto=_front(complete) if len(study.directions) > 1 else (complete[0],),
        why=why,
        anchor=len(study.directions) == 1 and anchor is not None and is_anchor(best, *anchor),
        notes=notes,
        baselines=tuple(t for t in complete if t.attrs.get(BASELINE)),
    )


def summarise_trial(study: optuna.Study, number: int) -> TrialSummary | None:
    """One trial by number (None if the study has none), marked :data:`OVER_BUDGET` when it
    breaks the limits of the study's latest run; unlike :func:`collect`, it never refuses a
    study none of whose trials meets them."""
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        return None
    trial = summary(found[0], study.user_attrs.get("context"))
    if trial.state == "COMPLETE":
        _mark_over_budget(trial, _stored_budget(study))
    return trial


def _mark_over_budget(trial: TrialSummary, budget: Budget | None) -> bool:
    """Mark a finished trial :data:`OVER_BUDGET` (with the limits it breaks) when its
    stored cost breaks ``budget``; whether it does."""
    if budget is None or not _breaks(trial, budget):
        return False
    trial.attrs[OVER_BUDGET] = "; ".join(budget.violations(stored_cost(trial.attrs)))
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


def stored_cost(attrs: dict) -> Cost | None:
    """A trial's stored cost (None for a trial recorded before costs were stored)."""
    try:
        return Cost(**{f.name: attrs[f.name] for f in fields(Cost)})
    except KeyError:
        return None


def _breaks(trial: TrialSummary, budget: Budget) -> bool:
    cost = stored_cost(trial.attrs)
    return cost is not None and bool(budget.violations(cost))


def _anchor_notes(
    study: optuna.Study, trials: Sequence[TrialSummary], budget: Budget | None
) -> list[str]:
    """What the report must say about the anchor rule when it did not apply: two
    objectives, or an anchor that breaks the present budget (an earlier run's limits do
    not count) and never finished within it."""
    anchor = anchor_of(study)
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
        "; ".join(budget.violations(stored_cost(t.attrs)))
        if budget and stored_cost(t.attrs)
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
