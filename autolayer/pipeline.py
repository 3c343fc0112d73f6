"""The stages behind every command: extract → score → complementarity → search → config.

This is the one orchestration module: it loads data, extracts (cached) features, and hands
arrays to the pure scorers (``probe``, ``cka``) and to the search, taking a progress
callback so the CLI only renders. Preparing the search's candidates (exhaustive or
multi-fidelity, and the few-label anchor's early skip) is :mod:`autolayer.candidates`; the
study a run writes into (its name, storage, context and identity) :mod:`autolayer.study`;
the output folder recommend holds and checks :mod:`autolayer.claims`; the sentences that
explain a recommendation :mod:`autolayer.reasons`. Settings travel with the data in one
:class:`Options`, held by the prepared state and stored in the study before its first trial.

Everything is chosen on a validation split carved from train (or the dataset's own): the
test split is never looked at here, so the recommendation's test accuracy (``apply``) is an
honest estimate. The study keeps the context needed to turn *any* of its trials into a
config (``export``), so a study can be re-read, resumed or exported later from its storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from autolayer import anchor
from autolayer.budgets import Budget
from autolayer.candidates import (
    PROBE_ROWS,
    ModelScores,
    Prepared,
    ProgressFactory,
    anchor_budget,
    dataset_of,
    embed,
    for_data,
    pair_estimates,
    prepare,
    resolve_models,
    resolve_options,
)
from autolayer.claims import check_output_dir, claim_output_dir
from autolayer.complementarity import PairEstimate
from autolayer.config import FusionConfig, HeadChoice, ModelChoice, library_versions
from autolayer.data import LabelledDataset
from autolayer.errors import ConfigError, warns_once
from autolayer.fidelity import Fidelity, StageCost
from autolayer.files import RECOMMENDATION, mark_ours
from autolayer.heads import head_class
from autolayer.options import Options
from autolayer.reasons import reasons
from autolayer.search import run_search
from autolayer.selection import (
    INFEASIBLE,
    OVER_BUDGET,
    REPEAT,
    RUNGS,
    TASK_PARAMS,
    SearchResult,
    TrialSummary,
)
from autolayer.sources import SourceRecord
from autolayer.space import Space, fixed_head, guided_trials
from autolayer.study import (
    check_own_database,
    default_storage,
    default_study_name,
    recommended_study,
    resumed_pool,
    study_context,
    study_identity,
)
from autolayer.task import DEFAULT as DEFAULT_TASK

logger = logging.getLogger("autolayer")
CKA_ROWS = 5000


@dataclass(frozen=True)
class Complementarity:
    """How models relate on the same rows: each pair's held-out probe evidence (what
    fusing them is predicted to gain) and linear CKA (how similar their features are)."""

    models: tuple[str, ...]
    layers: tuple[int, ...]  # the layer of each model used in ``matrix`` and ``pairs``
    matrix: np.ndarray  # [M, M] CKA at those layers
    grids: dict  # (model_a, model_b) -> [La, Lb] CKA of every layer pair
    n_examples: int
    debiased: bool
    pairs: tuple[PairEstimate, ...] = ()

    def to_dict(self) -> dict:
        return {
            "models": list(self.models),
            "layers": list(self.layers),
            "matrix": self.matrix.tolist(),
            "grids": {f"{a}|{b}": g.tolist() for (a, b), g in self.grids.items()},
            "n_examples": self.n_examples,
            "debiased": self.debiased,
            "pairs": [p.as_dict() for p in self.pairs],
        }


@dataclass(frozen=True)
class Recommendation:
    config: FusionConfig
    search: SearchResult
    reports: tuple[ModelScores, ...]
    cka_names: tuple[str, ...]
    cka: np.ndarray  # [M, M] at each model's best layer
    reasons: tuple[str, ...]
    stages: tuple[StageCost, ...] = ()
    dropped: dict = field(default_factory=dict)
    pairs: tuple[PairEstimate, ...] = ()


def model_names(models: object) -> list[str] | None:
    """``models`` as a public function takes it: None (the default pool), one name, or a
    sequence of names. A bare string is one model, not the list of its characters; anything
    else is refused, naming what was given, before any work."""
    if models is None:
        return None
    if isinstance(models, str):
        return [models]
    if isinstance(models, bytes | Mapping) or not isinstance(models, Iterable):
        raise ConfigError(
            "models must be a model name or a list of model names; "
            f"got {type(models).__name__} {models!r}"
        )
    names = list(models)
    wrong = next((i for i, name in enumerate(names) if not isinstance(name, str)), None)
    if wrong is not None:
        raise ConfigError(
            f"models[{wrong}] must be a model name (text); "
            f"got {type(names[wrong]).__name__} {names[wrong]!r}"
        )
    return names


def budget_of(budget: object) -> Budget:
    """The search's :class:`Budget` (None: the default one); anything else is refused before
    any work, rather than failing deep in the search."""
    if budget is None:
        return Budget()
    if not isinstance(budget, Budget):
        raise ConfigError(
            "budget must be an autolayer.Budget, e.g. Budget(n_trials=30), or None; "
            f"got {type(budget).__name__} {budget!r}"
        )
    return budget


def check_pretrained(models: Mapping[str, SourceRecord], command: str) -> None:
    """Refuse, before any extraction, sources that learn from the task's texts (TF-IDF):
    ``score`` and ``complementarity`` look at pretrained models' layers."""
    lexical = [name for name, record in models.items() if record.learns]
    if lexical:
        raise ConfigError(
            f"{command} takes pretrained models; {', '.join(lexical)} is fitted on training "
            "rows: use it in recommend, search or apply"
        )


@warns_once
def score(
    models: str | Sequence[str],
    dataset: str | Path | LabelledDataset = "demo",
    *,
    options: Options | None = None,
    split: str = "train",
    n_folds: int = 5,
    max_examples: int | None = None,
    progress: ProgressFactory | None = None,
    **settings,
) -> list[ModelScores]:
    """Rank every layer of each model by cross-validated linear-probe accuracy.

    With ``max_examples`` the probe runs on a stratified subsample; a second subsample (next
    seed) is probed too and the Spearman correlation of the two layer rankings is reported
    as the stability that subsampling costs.
    """
    from autolayer.probe import check_folds, probe_layers, rank_agreement

    options = resolve_options(options, settings)
    sources = resolve_models(model_names(models), options)
    check_pretrained(sources, "score")
    models = list(sources)
    data = dataset_of(dataset)
    options, _ = for_data(data, options)
    labels = data.split(split).labels
    check_folds(len(labels), n_folds)
    out = []
    for model in models:
        emb = embed(model, data, split, options, progress)
        X = np.asarray(emb.array)
        probe = {
            "n_folds": n_folds,
            "max_examples": max_examples,
            "device": options.device,
            "class_names": data.label_names,
            "metric": options.metric,
        }
        run = probe_layers(X, labels, seed=options.seed, **probe)
        stability = None
        if max_examples is not None and max_examples < len(labels):
            other = probe_layers(X, labels, seed=options.seed + 1, **probe)
            metric = options.metric  # the ranking compared: by the metric it ranks by
            stability = rank_agreement(getattr(run, metric), getattr(other, metric))
        out.append(ModelScores(model, emb.meta["n_hidden_states"], run, stability))
    return out


@warns_once
def complementarity(
    models: Sequence[str],
    dataset: str | Path | LabelledDataset = "demo",
    *,
    options: Options | None = None,
    split: str = "train",
    layers: dict[str, int] | None = None,
    max_examples: int = CKA_ROWS,
    debiased: bool = False,
    progress: ProgressFactory | None = None,
    **settings,
) -> Complementarity:
    """Each pair's predicted fusion gain (:mod:`autolayer.complementarity`) and linear CKA —
    the full layer × layer grid for each pair, and a model × model matrix — at each model's
    chosen layer (default: its best layer by linear probe).

    All models are embedded on the same split, so rows align by construction; at most
    ``max_examples`` rows (a seeded sample) are used.
    """
    from autolayer.cka import cka_grid, cka_matrix
    from autolayer.probe import probe_layers

    options = resolve_options(options, settings)
    sources = resolve_models(model_names(models), options, at_least=2)
    check_pretrained(sources, "complementarity")
    models = list(sources)
    data = dataset_of(dataset)
    options, _ = for_data(data, options)
    labels = data.split(split).labels
    rows = np.arange(len(labels))
    if len(rows) > max_examples:
        rng = np.random.default_rng(options.seed)
        rows = np.sort(rng.choice(len(rows), max_examples, replace=False))
    unknown = sorted(set(layers or {}) - set(models))
    if unknown:
        raise ConfigError(f"layers name models not compared: {', '.join(unknown)}")
    arrays = {m: np.asarray(embed(m, data, split, options, progress).array[rows]) for m in models}
    chosen = []
    for model in models:
        n_states = arrays[model].shape[1]
        if layers and model in layers:
            if not -n_states <= layers[model] < n_states:
                raise ConfigError(f"layer {layers[model]} of {model} is outside 0..{n_states - 1}")
            chosen.append(layers[model] % n_states)
        else:
            probe = probe_layers(
                arrays[model],
                labels[rows],
                seed=options.seed,
                max_examples=PROBE_ROWS,
                device=options.device,
                class_names=data.label_names,
                metric=options.metric,
            )
            chosen.append(probe.best_layer)
    at_layers = {m: arrays[m][:, layer] for m, layer in zip(models, chosen, strict=True)}
    matrix = cka_matrix(at_layers, debiased=debiased)
    grids = {
        (a, b): cka_grid(arrays[a], arrays[b], debiased=debiased, device=options.device)
        for i, a in enumerate(models)
        for b in models[i + 1 :]
    }
    pairs = pair_estimates(at_layers, labels[rows], options, class_names=data.label_names)
    return Complementarity(tuple(models), tuple(chosen), matrix, grids, len(rows), debiased, pairs)


def default_space(options: Options) -> Space:
    """The search space, the same with or without cross-validation (``options`` kept for
    callers that pass them): every head and the baselines (see :class:`Space`). The linear
    head was first offered for a few labels, which the MLP cannot train as well (measured in
    ``studies/fewshot``); on full training sets it is a baseline the recommendation must not
    lose to (TF-IDF + linear SVM, a sentence encoder's best layer + logistic regression),
    and late fusion the cheap fusion of linear classifiers (issue 29)."""
    return Space()


@warns_once
def search(
    prepared: Prepared,
    *,
    output_dir: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    budget: Budget | None = None,
    space: Space | None = None,
    multi_objective: bool = False,
    prune: bool = True,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
    guide: bool = True,
) -> SearchResult:
    """Run or resume the Optuna study over the prepared candidates, judged by the metric
    and seeded by the seed of ``prepared.options``. With ``guide``, a new study first
    tries the best model alone and the pairs predicted to gain most (see
    :func:`autolayer.space.guided_trials`).

    A stored study of the same name made for other data, models, metric or objectives is
    refused before any training (see :func:`autolayer.search.run_search`).
    """
    budget = budget_of(budget)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if storage is None:  # only None: "" (an unset variable) is refused by make_storage
        check_own_database(output_dir / "study.db")
        storage = default_storage(output_dir)
    study_name = study_name or default_study_name(prepared.data, prepared.pool, prepared.options)
    space = space or default_space(prepared.options)
    context = study_context(prepared, space)
    return run_search(
        prepared.candidates,
        prepared.y_train,
        prepared.y_val,
        task=prepared.task,
        storage=storage,
        study_name=study_name,
        budget=budget,
        space=space,
        options=prepared.options,
        multi_objective=multi_objective,
        prune=prune,
        callbacks=callbacks,
        heartbeat=heartbeat,
        context=context,
        identity=study_identity(context),
        first=_anchor_trial(prepared, space)
        + (guided_trials(prepared.candidates, prepared.pairs, space) if guide else []),
        folds=prepared.folds,
        rungs=prepared.rungs,
    )


def _anchor_trial(prepared: Prepared, space: Space) -> list[dict]:
    """The anchor's trial, run first: every other trial is judged against it."""
    name = prepared.options.anchor
    found = [c for c in prepared.candidates if c.name == name]
    if not found or anchor.HEAD not in space.heads:
        return []
    params = anchor.trial_params(name, found[0].n_hidden_states)
    return [{**params, **fixed_head(space, found, anchor.HEAD)}]


def trial_config(trial: TrialSummary, context: dict, study_name: str, storage: str) -> FusionConfig:
    """Build the exportable config of one trial from its parameters and the study context:
    the head's parameters as its class makes them final (the MLP: early stopping on a
    held-out share of the final head's rows; under cross-validation, the epochs it chose)."""
    models = []
    for name, layer in zip(trial.models, trial.layers, strict=True):
        info = context["models"][name]
        models.append(
            ModelChoice(
                spec=name,
                identity=info["identity"],
                layer=layer,
                n_hidden_states=info["n_hidden_states"],
                pooling=info["pooling"],
                max_length=info["max_length"],
            )
        )
    head = head_class(trial.head)  # every field, as a config read back holds them
    params = head.check_params(head.final_params(trial.head_params, trial.attrs))
    return FusionConfig(
        models=tuple(models),
        head=HeadChoice(trial.head, params),
        label_names=tuple(context["label_names"]),
        task=context.get("task", DEFAULT_TASK),
        task_params=trial.attrs.get(TASK_PARAMS, {}),
        dataset=context["dataset"],
        metric=context["metric"],
        seed=context["seed"],
        validation={
            context["metric"]: trial.value,
            "trial": trial.number,
            "study": study_name,
            "storage": storage,
        },
        cost={
            k: trial.attrs[k]
            for k in ("latency_ms", "memory_mb", "params", "fused_dim")
            if k in trial.attrs
        },
        versions=library_versions(),
    )


def export(
    storage: str | None = None,
    study_name: str | None = None,
    trial_number: int | None = None,
    *,
    output_dir: str | Path | None = None,
) -> FusionConfig:
    """Any trial of a stored study (default: the best) as a config.

    The study is found by ``storage`` (default: the SQLite file that ``search`` or
    ``recommend`` wrote in ``output_dir``) and ``study_name`` (default: the only study
    there). Reading never creates a storage or a study.
    """
    import optuna

    from autolayer.selection import collect, summarise_trial
    from autolayer.storage import open_existing_storage

    if storage is None:
        if output_dir is None:
            raise ConfigError(
                "give the output folder of search/recommend, or storage and study_name",
                params=("storage", "study_name"),
            )
        storage = default_storage(output_dir)
    opened = open_existing_storage(storage, study_name)
    names = sorted(s.study_name for s in opened.get_all_studies())
    if study_name is None and len(names) == 1:
        study_name = names[0]
    elif study_name is None and output_dir is not None:
        study_name = recommended_study(Path(output_dir))
    if study_name not in names:
        asked = "pass study_name" if study_name is None else f"no study named {study_name!r}"
        raise ConfigError(
            f"{asked}; studies in {storage}: {', '.join(names) or 'none'}",
            params=("study_name",) if study_name is None else (),
        )
    study = optuna.load_study(study_name=study_name, storage=opened)
    context = study.user_attrs.get("context")
    if context is None:
        raise ConfigError(f"study {study_name!r} was not made by autolayer (no context attribute)")
    if trial_number is None:
        result = collect(study, storage)
        for note in result.notes:  # trials left out, an anchor that never ran: said
            logger.warning("%s", note)
        return trial_config(result.best, context, study_name, storage)
    trial = summarise_trial(study, trial_number)
    if trial is None:
        raise ConfigError(f"study {study_name!r} has no trial {trial_number}")
    if trial.state != "COMPLETE":
        why = _untrained(trial)
        raise ConfigError(f"trial {trial_number} is {trial.state}{why}, not COMPLETE")
    if OVER_BUDGET in trial.attrs:  # asked for by number: exported, but said
        logger.warning(
            "trial %d breaks the latest run's budget (%s)", trial_number, trial.attrs[OVER_BUDGET]
        )
    return trial_config(trial, context, study_name, storage)


def _untrained(trial: TrialSummary) -> str:
    """Why a trial was never trained, for an error: the budget it broke, or what it repeats."""
    if INFEASIBLE in trial.attrs:
        return f" (infeasible: {trial.attrs[INFEASIBLE]})"
    if REPEAT in trial.attrs:
        return f" (a repeat of trial {trial.attrs[REPEAT]})"
    if trial.attrs.get(RUNGS) and trial.state == "PRUNED":
        return f" (pruned at {trial.attrs[RUNGS][-1][0]:,} rows: never trained on all of them)"
    return ""


def cka_at_best(prepared: Prepared) -> np.ndarray:
    """Model × model linear CKA at each model's best layer (on ≤ 5,000 train rows)."""
    from autolayer.cka import cka_matrix

    rows = slice(0, min(CKA_ROWS, len(prepared.y_train)))
    dense = {c.name: c.train[rows, 0] for c in prepared.candidates if not c.sparse}
    matrix = np.full((len(prepared.candidates),) * 2, np.nan)  # sparse sources: no CKA
    at = [i for i, c in enumerate(prepared.candidates) if not c.sparse]
    if dense:
        matrix[np.ix_(at, at)] = cka_matrix(dense)
    return matrix


def restrict(
    data: LabelledDataset,
    options: Options,
    *,
    max_train_samples: int | None = None,
    labels_per_class: int | None = None,
) -> tuple[LabelledDataset, Options]:
    """The training rows a run uses, seeded by ``options.seed``: all of them, a stratified
    sample of ``max_train_samples``, or ``labels_per_class`` of every class, which also
    turns on cross-validation (``min(5, labels_per_class)`` folds unless
    ``options.cv_folds`` is set): with a few labels, no validation split can be spared.
    It also sets the anchor to ``"auto"`` unless ``options.anchor`` is set: a few labels
    cannot pick a layer reliably, so a default has to be beaten clearly. The options come
    back resolved for the data (:func:`for_data`: its task and metric named, few-label
    mode refused on multi-label data), before a study is named or anything extracted."""
    if max_train_samples is not None and labels_per_class is not None:
        raise ConfigError(
            "give max_train_samples or labels_per_class, not both",
            params=("max_train_samples", "labels_per_class"),
        )
    options, _ = for_data(data, options)
    if max_train_samples is not None:
        data = data.subsample(max_train_samples, seed=options.seed)
    if labels_per_class is not None:
        data = data.per_class(labels_per_class, seed=options.seed)
        if options.cv_folds is None:
            options = replace(options, cv_folds=max(2, min(5, labels_per_class)))
        if options.anchor is None:
            options = replace(options, anchor=anchor.AUTO)
    return data, options


@warns_once
def recommend(
    dataset: str | Path | LabelledDataset = "demo",
    models: Sequence[str] | None = None,
    *,
    options: Options | None = None,
    output_dir: str | Path = "autolayer-out",
    budget: Budget | None = None,
    space: Space | None = None,
    top_k: int = 3,
    storage: str | None = None,
    study_name: str | None = None,
    multi_objective: bool = False,
    progress: ProgressFactory | None = None,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
    overwrite: bool = False,
    fidelity: Fidelity | None = Fidelity(),  # noqa: B008 - frozen, so a shared default is safe
    max_train_samples: int | None = None,
    labels_per_class: int | None = None,
    **settings,
) -> Recommendation:
    """screen → select → complete → search; writes ``recommendation.yaml`` in ``output_dir``.

    Multi-fidelity by default: a screen, and trials ranked on rungs of rows (see
    :mod:`autolayer.rungs`; ``fidelity=None``: every layer of every model on every row,
    and every trial on every row, as an exhaustive sweep would). ``max_train_samples``
    caps the training split (a stratified, seeded sample); ``labels_per_class`` keeps that
    many seeded labels of every class instead (few-label mode: configurations are then
    judged by ``min(5, labels_per_class)``-fold cross-validation over the draw unless
    ``cv_folds`` says otherwise). ``options`` (or keyword ``settings``: ``seed=1``,
    ``max_length=128``…) as in :func:`prepare`. An ``output_dir`` whose recommendation was
    made for other data is refused before any work unless ``overwrite`` (its study database
    is kept either way: studies are keyed by data and models, so several live side by side).
    """
    models, budget = model_names(models), budget_of(budget)
    options = resolve_options(options, settings)
    data, options = restrict(
        dataset_of(dataset),
        options,
        max_train_samples=max_train_samples,
        labels_per_class=labels_per_class,
    )
    with claim_output_dir(Path(output_dir), data.fingerprint):  # till its yaml is written
        check_output_dir(Path(output_dir), data, overwrite=overwrite)
        space = space or default_space(options)
        study_name = study_name or default_study_name(data, models, options)
        prepared = prepare(
            data,
            models,
            options=options,
            top_k=top_k,
            fidelity=fidelity,
            progress=progress,
            anchor_budget=anchor_budget(budget, space, multi_objective),
            resumed_pool=resumed_pool(output_dir, storage, study_name),
        )
        started = time.process_time()
        result = search(
            prepared,
            output_dir=output_dir,
            storage=storage,
            study_name=study_name,
            budget=budget,
            space=space,
            multi_objective=multi_objective,
            callbacks=callbacks,
            heartbeat=heartbeat,
        )
        trained = result.trained or 0
        heads = f"{trained} head{'s' * (trained != 1)} trained"
        searched = StageCost("search", time.process_time() - started, 0, heads)
        context = study_context(prepared, space)
        config = trial_config(result.best, context, result.study_name, result.storage)
        mark_ours(config.save(Path(output_dir) / RECOMMENDATION), "recommendation")
    cka = cka_at_best(prepared)
    return Recommendation(
        config=config,
        search=result,
        reports=prepared.reports,
        cka_names=tuple(c.name for c in prepared.candidates),
        cka=cka,
        reasons=tuple(reasons(prepared, result, cka)),
        stages=(*prepared.stages, searched),
        dropped=prepared.dropped,
        pairs=prepared.pairs,
    )
