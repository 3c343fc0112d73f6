"""The search's candidates: each model's top-k layers, their features and what they cost.

``prepare`` is the stage between extraction and the search. Exhaustive, it extracts every
layer of every model on every training row and probes them; multi-fidelity
(:mod:`autolayer.fidelity`), it screens every model on a sample, drops those that cannot
plausibly matter, and completes the survivors only up to their deepest kept layer. With few
labels it first scores the anchor and, when no trial of the budget could beat it, extracts
nothing else. Rows are split here once (search-train and validation, or cross-validation
folds), so every later step judges on the same rows.

One module, though over 600 lines: the three ways of preparing (exhaustive, lexical,
screened then completed) and the anchor's early skip all build the same private records
(``_Rows``, ``_Features``, ``_candidate``); the skip, which extracts and prices through
them, cannot move into :mod:`autolayer.anchor` either: this module imports that one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.sparse import issparse

from autolayer import anchor, zoo
from autolayer.budgets import Budget
from autolayer.complementarity import PairEstimate, estimate_pairs
from autolayer.data import LabelledDataset, load_dataset
from autolayer.errors import ConfigError, DataError
from autolayer.extraction import Embeddings, embed_texts
from autolayer.fidelity import Fidelity, StageClock, StageCost, computed, select
from autolayer.heads import head_class
from autolayer.metrics import MULTI_LABEL_METRICS
from autolayer.options import Options
from autolayer.probe import LayerScores
from autolayer.rungs import Ladder, Rungs
from autolayer.search import anchor_can_stop
from autolayer.sources import SourceRecord, resolve_spec
from autolayer.space import SEPARATOR, Candidate, LayerCost, Space, split_models
from autolayer.task import Task, make_task

logger = logging.getLogger("autolayer")

DEFAULT_MODELS = ("minilm", "smollm2")  # the neural defaults (zoo aliases)
LEXICAL_DEFAULT = "tfidf"  # always in the default pool: nothing to install
PROBE_ROWS = 4000  # probes of the layers run on a stratified sample of at most this many rows
PROBE_FOLDS = 5  # folds of the layer probes (with a few labels, the search's own folds)
PAIR_ROWS = 2000  # pairs are estimated on this many search-train rows (the screen's, if any)
ProgressFactory = Callable[[str, int], object]


@dataclass(frozen=True)
class ModelScores:
    """Probe scores of every layer of one model on one dataset split."""

    model: str
    n_hidden_states: int
    scores: LayerScores
    rank_stability: float | None = None  # Spearman ρ of two subsample rankings, if subsampled
    searched: tuple[int, ...] = ()  # the top-k layers offered to the search, best first

    @property
    def best_layer(self) -> int:
        """Best by the search's metric when it was ranked for a search, else by accuracy."""
        return self.searched[0] if self.searched else self.scores.best_layer

    @property
    def last_layer(self) -> int:
        return self.n_hidden_states - 1

    def to_dict(self) -> dict:
        """``score --json``: each layer's probe metrics under their names (single-label:
        accuracy with its std and macro-F1, as ever; multi-label: each of the task's
        metrics with its std) and its rank by the metric the layers were ranked by."""
        s = self.scores
        return {
            "model": self.model,
            "best_layer": self.best_layer,
            "last_layer": self.last_layer,
            "n_folds": s.n_folds,
            "n_examples": s.n_examples,
            "rank_stability": self.rank_stability,
            "layers": [
                {
                    "layer": i,
                    "depth": i / max(self.last_layer, 1),
                    **{name: float(getattr(s, name)[i]) for name in _json_metrics(s)},
                    "rank": int(np.flatnonzero(s.ranking() == i)[0]) + 1,
                }
                for i in range(self.n_hidden_states)
            ],
        }


def _json_metrics(scores: LayerScores) -> tuple[str, ...]:
    """The per-layer fields of ``score --json``: a multi-label probe's metrics (it scores
    micro-F1) each with its std; single-label's three fields as they always were."""
    if "micro_f1" not in scores.metrics:
        return ("accuracy", "accuracy_std", "macro_f1")
    return tuple(f"{m}{std}" for m in MULTI_LABEL_METRICS for std in ("", "_std"))


@dataclass(frozen=True)
class Prepared:
    """Inputs of a search: the data, its options and task, train/validation labels,
    candidates."""

    data: LabelledDataset
    options: Options  # how the candidates' features were made: export must say the same
    task: Task  # ``options.task``, built once: the search's heads train for it
    y_train: np.ndarray
    y_val: np.ndarray
    candidates: tuple[Candidate, ...]
    reports: tuple[ModelScores, ...]
    validation: dict
    stages: tuple[StageCost, ...] = ()  # what preparing cost, stage by stage
    dropped: dict = field(default_factory=dict)  # model → why the screen dropped it
    pairs: tuple[PairEstimate, ...] = ()  # every pair of models, at their best layers
    folds: tuple[np.ndarray, ...] = ()  # held-out rows of y_train: cross-validation
    pool: tuple[str, ...] = ()  # the models asked for, whatever the skip or screen kept
    sources: Mapping[str, SourceRecord] = field(default_factory=dict)  # the pool's, by name
    rungs: Ladder | None = None  # the samples of y_train a trial climbs (autolayer.rungs)


def resolve_options(options: Options | None, settings: dict) -> Options:
    """``options`` with keyword ``settings`` (``seed=1``, ``pooling="last"``…) applied."""
    try:
        return replace(options or Options(), **settings)
    except TypeError:
        known = set(Options.__dataclass_fields__)
        unknown = ", ".join(sorted(set(settings) - known))
        raise ConfigError(
            f"unknown option(s) {unknown}; known: {', '.join(sorted(known))}"
        ) from None


def for_data(data: LabelledDataset, options: Options) -> tuple[Options, Task]:
    """``options`` where they first meet ``data``: the task named (None: the data's own,
    single- or multi-label) and built, the metric named (:meth:`Options.for_task`). A
    task whose target the labels are not (a single-label task on label sets) is refused
    here, in one line, and so is few-label mode (``cv_folds``) on anything but
    single-label data: its folds, anchor and margins count classes of one label each."""
    task = make_task(options.task or data.task)
    labels = data.split("train").labels
    try:
        task.target(labels, len(labels), "labels")
    except ConfigError:
        raise ConfigError(
            f"task {task.name!r} does not fit dataset {data.name!r}, whose labels are "
            f"{data.task.replace('_', '-')}; leave the task out to use the data's",
            params=("task",),
        ) from None
    if options.cv_folds is not None:
        data.check_single_label("cv_folds")
    return options.for_task(task), task


def default_models() -> list[str]:
    """Installed zoo models among the defaults (the demo must run offline), and TF-IDF."""
    installed = [m for m in DEFAULT_MODELS if zoo.installed_folder(m) is not None]
    return [*(installed or [DEFAULT_MODELS[0]]), LEXICAL_DEFAULT]


def check_models(models: Sequence[str] | None, *, at_least: int = 1) -> list[str]:
    """The model list, checked: ``None`` is the default pool; empty or repeated is an error,
    and so is a name that is also a join of others (names ``a``, ``b`` and ``a + b``): the
    search's choices join names with :data:`~autolayer.space.SEPARATOR`, and the pair would
    read as the one model, never searched."""
    models = default_models() if models is None else list(models)
    if len(models) < at_least:
        raise ConfigError(f"give at least {at_least} model(s); got {len(models)}")
    if len(set(models)) != len(models):
        raise ConfigError(f"models must be distinct; got {', '.join(models)}")
    for name in models:
        parts = split_models(name, [m for m in models if m != name])
        if parts:
            raise ConfigError(
                f"model {name!r} is also {' and '.join(map(repr, parts))} joined with "
                f"{SEPARATOR!r}: a search could not tell them apart; rename or leave out one",
                params=("models",),
            )
    return models


def resolve_models(
    models: Sequence[str] | None, options: Options, *, at_least: int = 1
) -> dict[str, SourceRecord]:
    """The model list checked (:func:`check_models`) and each spec resolved once, by name:
    a missing model is found before hours of another's extraction."""
    return {
        name: resolve_spec(
            name, max_length=options.max_length, trust_remote_code=options.trust_remote_code
        )
        for name in check_models(models, at_least=at_least)
    }


def dataset_of(dataset: str | Path | LabelledDataset) -> LabelledDataset:
    """A dataset given by name or path, loaded; one already loaded, as it is."""
    return dataset if isinstance(dataset, LabelledDataset) else load_dataset(dataset)


def embed(
    model: str,
    data: LabelledDataset,
    split: str,
    options: Options,
    progress: ProgressFactory | None = None,
    *,
    rows: np.ndarray | None = None,
    layers: Sequence[int] | None = None,
) -> Embeddings:
    """Layers (default: all) of ``model`` over a split or some of its ``rows`` (cached),
    with a progress bar when asked."""
    texts = data.split(split).texts
    where = f"{data.name}/{split}"
    if rows is not None:
        where += f" ({len(rows)} rows)"
    settings = {"layers": layers, "source": where, "rows": rows, **options.extraction()}
    if progress is None:
        return embed_texts(model, texts, **settings)
    with progress(f"{model} · {where}", len(texts) if rows is None else len(rows)) as advance:
        return embed_texts(model, texts, progress=advance, **settings)


def _split_rows(data: LabelledDataset, options: Options, task: Task) -> _Rows:
    """Search-train and validation rows: a source validation split when there is one, a
    carved one otherwise, or none under cross-validation (every row trains and, in its
    fold, validates). A validation split that cannot judge (one class) is refused here,
    before any extraction."""
    every = np.arange(len(data.split("train")))
    if options.cv_folds is not None:
        return _Rows(data, task, every, np.empty(0, dtype=np.int64), external=False)
    if "validation" in data.splits:
        data.check_validation()
        return _Rows(data, task, every, np.empty(0, dtype=np.int64), external=True)
    train, val = data.train_validation(size=options.validation_size, seed=options.seed)
    return _Rows(data, task, train, val, external=False)


def _check_learnable(data: LabelledDataset, models: Sequence[SourceRecord], rows: _Rows) -> None:
    """Sources that learn from the search-train texts (TF-IDF) check that they can, before
    any model is extracted: found after the other models' extraction, it cost that time."""
    texts = data.split("train").texts
    for record in models:
        if record.learns:
            record.source.check_texts([texts[i] for i in rows.train])


def _split_kind(rows: _Rows, options: Options) -> str:
    """What validated, recorded so that a config never claims a split it did not use (a
    few-label run has no validation rows; a dataset's own split has no carved size)."""
    if options.cv_folds is not None:
        return "cross-validation"
    return "dataset" if rows.external else "carved"


def prepare(
    dataset: str | Path | LabelledDataset = "demo",
    models: Sequence[str] | None = None,
    *,
    options: Options | None = None,
    top_k: int = 3,
    probe_max_examples: int | None = PROBE_ROWS,
    fidelity: Fidelity | None = None,
    progress: ProgressFactory | None = None,
    anchor_budget: Budget | None = None,
    resumed_pool: Sequence[str] = (),
    **settings,
) -> Prepared:
    """Features of each model's top-k layers for the search, and what they cost.

    Exhaustive by default (every layer of every model on every training row, probed);
    with ``fidelity`` multi-fidelity (screen, select, complete: see
    :mod:`autolayer.fidelity`). ``options`` (or keyword ``settings`` such as
    ``pooling="last"``) decide the features and the validation split, and travel with the
    result into the search and the study. With an anchor and ``anchor_budget`` (the budget
    of a single-objective search that offers the linear head), the anchor is scored first,
    and when it fits that budget and none of its trials could beat it, the other models are
    not extracted at all (:func:`autolayer.anchor.unbeatable`). ``resumed_pool`` (see
    :func:`autolayer.study.study_pool`) overrides that decision for a study being resumed:
    a pool of more models keeps every model, and the anchor alone keeps the anchor alone.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1; got {top_k}")
    options = resolve_options(options, settings)
    data = dataset_of(dataset)
    options, task = for_data(data, options)
    sources = resolve_models(models, options)
    models = list(sources)
    pool = tuple(models)
    options = replace(options, anchor=_anchor(options, sources))
    rows = _split_rows(data, options, task)
    _check_learnable(data, list(sources.values()), rows)
    if options.cv_folds is not None:
        options = _fit_folds(data, options, task)
    clock = StageClock()
    unread = {}
    if options.anchor is not None and len(models) > 1:
        if list(resumed_pool) == [options.anchor]:
            reason = "not extracted: the study being resumed holds the anchor alone"
        elif anchor_budget is None or len(resumed_pool) > 1:
            reason = None
        else:
            record = sources[options.anchor]
            reason = _unbeaten_anchor(
                data, rows, options, task, record, anchor_budget, clock, progress
            )
        if reason is not None:
            unread = {name: reason for name in models if name != options.anchor}
            models = [options.anchor]
    if fidelity is not None and fidelity.screens(len(rows.train)):
        fidelity.check(len(rows.train), len(data.label_names), data.nouns[1])
        features, dropped, pairs = _screened(
            data, {n: sources[n] for n in models}, rows, options, top_k, fidelity, clock, progress
        )
    else:
        features = [
            _exhaustive(
                data, sources[name], rows, options, top_k, probe_max_examples, clock, progress
            )
            for name in models
        ]
        dropped, pairs = {}, ()
        if len(features) > 1:
            with clock.stage("pairs", f"each pair probed on ≤ {PAIR_ROWS} rows"):
                pairs = _pairs(features, rows, options)
    candidates = tuple(_candidate(f) for f in features)
    reports = tuple(ModelScores(f.name, f.n_states, f.scores, searched=f.top) for f in features)
    validation = {
        "split": (split := _split_kind(rows, options)),
        **({"size": options.validation_size} if split == "carved" else {}),
        "seed": options.seed,
        "n_train": len(rows.y_train),
        "n_val": len(rows.y_val),
    }
    folds = ()
    if options.cv_folds is not None:
        from autolayer.probe import folds as stratified_folds

        folds = tuple(stratified_folds(rows.strata, options.cv_folds, options.seed))
        validation["cv_folds"] = len(folds)
    rungs = None
    if fidelity is not None and fidelity.rungs is not None and not folds:
        rungs = fidelity.rungs.ladder(rows.y_train, rows.strata, options.seed)
        _say_no_rungs(fidelity.rungs, len(rows.y_train), rungs)
    return Prepared(
        data,
        options,
        task,
        rows.y_train,
        rows.y_val,
        candidates,
        reports,
        validation,
        clock.costs(),
        {**unread, **dropped},
        pairs,
        folds,
        pool,
        sources,
        rungs,
    )


def _say_no_rungs(rungs: Rungs, n_train: int, ladder: Ladder | None) -> None:
    """Say why a search that could have sampled rows will not: rows for a first rung, too
    few to save anything by it (a smaller set is searched on every row without a word)."""
    if ladder is None and n_train >= rungs.min_rows:
        logger.warning(
            "no rungs of rows: %s search-train rows (the training rows less the validation "
            "split) are fewer than %d × %s; every trial trains on all of them",
            f"{n_train:,}",
            rungs.factor,
            f"{rungs.min_rows:,}",
        )


def anchor_budget(budget: Budget, space: Space, multi_objective: bool = False) -> Budget | None:
    """``budget``, for :func:`prepare`'s early skip, when an unbeatable anchor may end that
    search (:func:`autolayer.search.anchor_can_stop`); else None. One rule for ``recommend``
    and ``search``, so the same command makes the same study. Not for heads of finitely
    many settings only (linear heads): their space may offer fewer configurations than
    trials, hence need a smaller margin, and how many is known only once the models are
    extracted (the search decides then)."""
    if all(head_class(k).n_configurations(space) is not None for k in space.heads):
        return None
    return budget if anchor_can_stop(budget, space, multi_objective) else None


def _anchor(options: Options, models: Mapping[str, SourceRecord]) -> str | None:
    """The resolved anchor (as the pool spells it), or None: the anchor rule judges trials
    by their scores over every held-out row of a cross-validation, so only
    cross-validation has one."""
    if options.cv_folds is None:
        if options.anchor not in (None, anchor.AUTO, anchor.NONE):
            raise ConfigError(
                f"anchor {options.anchor!r} needs cross-validation (labels_per_class or cv_folds)",
                params=("anchor", "labels_per_class", "cv_folds"),
            )
        return None
    return anchor.resolve(options.anchor, models)


def _unbeaten_anchor(
    data, rows, options, task: Task, record: SourceRecord, budget: Budget, clock, progress
) -> str | None:
    """Why the other models need not be extracted, when the anchor's cross-validated score
    (its last layer, linear head, as its trial will score it) is out of reach of every
    trial ``budget`` allows and the anchor meets the budget's limits; else None.

    Every layer is kept, not only the last: the forward pass runs the whole backbone for
    the last layer anyway, and when the search goes on it reads them from the cache."""
    from autolayer.heads import cross_validate, make_head
    from autolayer.probe import folds as stratified_folds

    with clock.stage("anchor", "the anchor's last layer, cross-validated") as count:
        train = embed(options.anchor, data, "train", options, progress)
        count(computed(train.meta, len(train.layers)))
        x = np.asarray(train.array[rows.train])[:, -1]
        folds = stratified_folds(rows.strata, options.cv_folds, options.seed)
        head = make_head(anchor.HEAD, {}, task=task, metric=options.metric)
        score = cross_validate(
            head,
            [x],
            rows.y_train,
            folds,
            seed=options.seed,
            n_outputs=len(data.label_names),
        ).best_val_metric
    n = len(rows.y_train)
    if not anchor.unbeatable(score, n, budget.n_trials):
        return None
    if budget.violations(_anchor_cost(record, train, x, len(data.label_names))):
        return None  # its trial would be infeasible: the search must find another
    return (
        f"not extracted: the anchor's CV score {score:.4f} on {n} texts is out of reach of "
        f"the {budget.n_trials} trials' margin"
    )


def _anchor_cost(record: SourceRecord, train, x: np.ndarray, n_classes: int):
    """What the anchor's trial (its last layer, linear head) costs, priced as the search
    prices it (:func:`autolayer.space.cost_of`)."""
    from autolayer.space import cost_of

    last = train.meta["n_hidden_states"] - 1
    features = _Features(
        record, last + 1, (last,), None, x[:, None], x[:0, None], _ms_per_text(train.meta)
    )
    return cost_of([_candidate(features)], [last], anchor.HEAD, {}, n_classes, len(x))


def _searched(name: str, scores: LayerScores, options: Options, top_k: int) -> tuple[int, ...]:
    """A model's layers offered to the search: its top-k by probe, and the anchor's last
    layer (the trial every other must beat clearly)."""
    ranking = scores.ranking(options.metric)
    top = tuple(int(i) for i in ranking[:top_k])
    last = len(ranking) - 1
    return top + (last,) if name == options.anchor and last not in top else top


def folds_run(data: LabelledDataset, options: Options, task: Task | None = None) -> int | None:
    """The folds a cross-validation of ``data``'s training rows runs (None without one):
    ``options.cv_folds``, or as many as the rarest stratum (``task.strata``) has examples
    when that is fewer. Cheap and known before any extraction, so every caller that names
    the study (from the options as given, or from a prepared run's) names it by the folds
    that ran. Without ``task`` (a study named before one is built), rows are stratified by
    class, as the single-label task stratifies them."""
    if options.cv_folds is None:
        return None
    return int(min(options.cv_folds, _stratum_counts(data, task).min()))


def _stratum_counts(data: LabelledDataset, task: Task | None) -> np.ndarray:
    """Training rows of each stratum of ``task`` (by class without one), every class
    counted, those with no row too."""
    labels = data.split("train").labels
    strata = labels if task is None else task.strata(labels)
    return np.bincount(strata, minlength=len(data.label_names))


def _fit_folds(data: LabelledDataset, options: Options, task: Task) -> Options:
    """Before any extraction: refuse a class that no fold could both train and judge, and
    use no more folds than the rarest class has examples (:func:`folds_run`; said once,
    here, and recorded in the study as the folds that ran, so a 5-fold request that ran 3
    folds is the same study as a 3-fold one). Every training row is in some fold."""
    counts = _stratum_counts(data, task)
    rarest = int(np.argmin(counts))
    if counts[rarest] < 2:
        raise DataError(
            f"dataset {data.name!r}: cross-validation needs 2 or more examples of every class; "
            f"class {data.label_names[rarest]!r} has {counts[rarest]}"
        )
    folds = folds_run(data, options, task)
    if folds == options.cv_folds:
        return options
    logger.warning(
        "cross-validation over %d folds, not %d: class %r has %d training examples",
        folds,
        options.cv_folds,
        data.label_names[rarest],
        counts[rarest],
    )
    return replace(options, cv_folds=folds)


class _Rows:
    """Which rows of the train split train the heads and which validate them (``external``:
    the source's validation split validates instead), and the task's stratum of each
    search-train row (what its samples and folds keep the proportions of)."""

    def __init__(
        self,
        data: LabelledDataset,
        task: Task,
        train: np.ndarray,
        val: np.ndarray,
        *,
        external: bool,
    ) -> None:
        labels = data.split("train").labels
        self.train, self.val, self.external = train, val, external
        self.y_train = labels[train]
        self.strata = task.strata(self.y_train)
        self.names = data.label_names  # what the labels index, for messages
        self.y_val = data.split("validation").labels if external else labels[val]


@dataclass(frozen=True)
class _Features:
    """One model's top-k layer features for the search, and where they were scored."""

    record: SourceRecord
    n_states: int
    top: tuple[int, ...]
    scores: LayerScores
    train: np.ndarray  # [n_train, k, D], or sparse [n_train, V] for a sparse source
    val: np.ndarray  # [n_val, k, D], or sparse [n_val, V]
    ms_per_text: float  # measured full-depth extraction time
    memory_mb: float | None = None  # a fitted source's own (its vocabulary); None: as priced

    @property
    def name(self) -> str:
        return self.record.spec


def _ms_per_text(meta: dict) -> float:
    """Measured time per text, over every chunk any run of the extraction computed (an
    extraction resumed after its last chunk computed none itself)."""
    if "timed_rows" in meta:
        return 1000 * meta["timed_seconds"] / max(meta["timed_rows"], 1)
    return 1000 * meta["seconds"] / max(meta["computed_rows"], 1)


def _exhaustive(data, record, rows, options, top_k, probe_max_examples, clock, progress):
    """Every layer on every training row, probed on (a sample of) the search-train rows."""
    from autolayer.probe import probe_layers

    name = record.spec
    if record.learns:
        with clock.stage("extract", "every layer, every row"):
            x_train, x_val, ms, memory = _lexical(data, record, rows)
        with clock.stage("probe", "every layer"):
            scores = probe_layers(
                x_train,
                rows.y_train,
                n_folds=options.cv_folds or PROBE_FOLDS,
                seed=options.seed,
                max_examples=probe_max_examples,
                class_names=rows.names,
                metric=options.metric,
            )
        return _Features(record, 1, (0,), scores, x_train, x_val, ms, memory)
    with clock.stage("extract", "every layer, every row") as count:
        train = embed(name, data, "train", options, progress)
        count(computed(train.meta, len(train.layers)))
        x_train = np.asarray(train.array[rows.train])
        if not rows.external:
            x_val = np.asarray(train.array[rows.val])
        else:
            valid = embed(name, data, "validation", options, progress)
            count(computed(valid.meta, len(valid.layers)))
            x_val = np.asarray(valid.array)
    with clock.stage("probe", "every layer") as _:
        scores = probe_layers(
            x_train,
            rows.y_train,
            n_folds=options.cv_folds or PROBE_FOLDS,  # a few labels: the search's folds
            seed=options.seed,
            max_examples=probe_max_examples,
            device=options.device,
            class_names=rows.names,
            metric=options.metric,
        )
    top = _searched(name, scores, options, top_k)
    keep = list(top)
    n_states = train.meta["n_hidden_states"]
    ms = _ms_per_text(train.meta)
    return _Features(record, n_states, top, scores, x_train[:, keep], x_val[:, keep], ms)


def _lexical(data: LabelledDataset, record: SourceRecord, rows: _Rows):
    """A source that learns from texts (TF-IDF), fitted on the search-train rows only, then
    applied to those and the validation rows: (train ``[n_train, V]``, validation, ms per
    text, memory MB), as :func:`_one_state` gives them."""
    texts = data.split("train").texts
    source = record.unfitted().fit([texts[i] for i in rows.train])
    start = time.perf_counter()  # what the budgets price: the transform, as predict runs it
    matrix = _one_state(source.transform(texts))
    ms, memory = 1000 * (time.perf_counter() - start) / max(len(texts), 1), source.memory_mb(0)
    if not rows.external:
        return matrix[rows.train], matrix[rows.val], ms, memory
    valid = _one_state(source.transform(data.split("validation").texts))
    return matrix[rows.train], valid, ms, memory


def _one_state(features):
    """What a fitted source transformed, as the search reads it: a sparse matrix
    ``[N, V]`` as it is, dense features ``[N, D]`` as their one state ``[N, 1, D]``."""
    return features if issparse(features) else np.asarray(features, dtype=np.float32)[:, None]


def _screened(data, records, rows, options, top_k, fidelity, clock, progress):
    """Screen every model (``records``, by name) on a sample, drop the clearly worse,
    complete the survivors."""
    from autolayer.probe import probe_layers
    from autolayer.sampling import stratified_rows

    pick = stratified_rows(rows.strata, fidelity.screen_size, options.seed, per_class=1)
    screen = rows.train[pick]  # sorted rows of the train split
    screened, scores, lexical = {}, {}, {}
    models = list(records)
    for name, record in records.items():
        if record.learns:  # cheap: fitted and applied to every row at once
            with clock.stage("screen", f"every layer, {len(screen)} rows"):
                lexical[name] = _lexical(data, record, rows)
                screened[name] = lexical[name][0][pick]
                scores[name] = probe_layers(
                    screened[name],
                    rows.y_train[pick],
                    n_folds=fidelity.n_folds,
                    seed=options.seed,
                    class_names=rows.names,
                    metric=options.metric,
                )
            continue
        with clock.stage("screen", f"every layer, {len(screen)} rows") as count:
            emb = embed(name, data, "train", options, progress, rows=screen)
            count(computed(emb.meta, len(emb.layers)))
            scores[name] = probe_layers(
                np.asarray(emb.array),
                rows.y_train[pick],
                n_folds=fidelity.n_folds,
                seed=options.seed,
                device=options.device,
                class_names=rows.names,
                metric=options.metric,
            )
        screened[name] = emb
    with clock.stage("select", "each pair probed on the screen"):
        best = {name: scores[name].ranking(options.metric)[0] for name in models}
        pairs = pair_estimates(
            {
                name: emb if name in lexical else emb.layer(int(best[name]))
                for name, emb in screened.items()
            },
            rows.y_train[pick],
            options,
            fidelity.n_folds,
            rows.names,
        )
        # TF-IDF (fitted on the texts) is kept: no forward pass to save, and a baseline
        survivors, dropped = select(scores, options.metric, fidelity, pairs, keep=set(lexical))
        if dropped.pop(options.anchor, None) is not None:  # the anchor is always searched
            survivors = [name for name in models if name in survivors or name == options.anchor]
    rest = np.setdiff1d(rows.train, screen)
    features = []
    for name in survivors:
        if name in lexical:
            features.append(_Features(records[name], 1, (0,), scores[name], *lexical[name]))
            continue
        top = _searched(name, scores[name], options, top_k)
        with clock.stage("complete", "other rows, survivors, up to their top-k layers") as count:
            x_train, x_val = _complete(
                data, name, rows, screen, rest, screened[name], top, options, progress, count
            )
        meta = screened[name].meta
        features.append(
            _Features(
                records[name],
                meta["n_hidden_states"],
                top,
                scores[name],
                x_train,
                x_val,
                _ms_per_text(meta),
            )
        )
    return features, dropped, pairs


def _pairs(
    features: Sequence[_Features], rows: _Rows, options: Options
) -> tuple[PairEstimate, ...]:
    """Pair estimates at each model's best layer on a stratified sample of search-train rows."""
    from autolayer.sampling import stratified_rows

    y_train = rows.y_train
    sample = np.arange(len(y_train))
    if len(sample) > PAIR_ROWS:
        sample = stratified_rows(rows.strata, PAIR_ROWS, options.seed, per_class=1)
    at_best = {
        f.name: f.train[sample] if issparse(f.train) else f.train[sample, 0] for f in features
    }
    return pair_estimates(at_best, y_train[sample], options, class_names=rows.names)


def pair_estimates(
    features: dict[str, np.ndarray],
    y: np.ndarray,
    options: Options,
    n_folds: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[PairEstimate, ...]:
    """Each pair's held-out probe evidence (:func:`autolayer.complementarity.estimate_pairs`)
    on the same rows, seeded and placed on the device by ``options``. ``n_folds`` defaults
    to the probes' folds, or the search's when it cross-validates over fewer: a few labels
    were already fitted to their folds (and said so once), and asking for more would say it
    again, with another number."""
    if len(features) < 2:
        return ()
    if n_folds is None:
        n_folds = min(PROBE_FOLDS, options.cv_folds or PROBE_FOLDS)
    return tuple(
        estimate_pairs(
            features,
            y,
            n_folds=n_folds,
            seed=options.seed,
            device=options.device,
            class_names=class_names,
        )
    )


def _complete(data, name, rows, screen, rest, screened, top, options, progress, count):
    """Top-k layer features of every search-train and validation row: the screen's rows
    from the screen, the others extracted now (the backbone cut above the deepest)."""
    others = np.concatenate([rest, rows.val])
    emb = embed(name, data, "train", options, progress, rows=others, layers=top)
    count(computed(emb.meta, len(emb.layers)))
    columns = [emb.layers.index(layer) for layer in top]
    rest_features = np.asarray(emb.array)[:, columns]
    x_train = np.empty((len(rows.train), len(top), rest_features.shape[-1]), dtype=np.float32)
    x_train[np.searchsorted(rows.train, screen)] = np.asarray(screened.array)[:, list(top)]
    x_train[np.searchsorted(rows.train, rest)] = rest_features[: len(rest)]
    if not rows.external:
        return x_train, rest_features[len(rest) :]
    valid = embed(name, data, "validation", options, progress, layers=top)
    count(computed(valid.meta, len(valid.layers)))
    return x_train, np.asarray(valid.array)[:, [valid.layers.index(layer) for layer in top]]


def _candidate(features: _Features) -> Candidate:
    """The search's view of a model: its features and what each layer costs to run."""
    source = features.record.source
    ms = features.ms_per_text
    costs = {
        layer: LayerCost(
            ms * source.latency_fraction(layer),
            source.memory_mb(layer) if features.memory_mb is None else features.memory_mb,
        )
        for layer in features.top
    }
    return Candidate(
        features.name,
        features.top,
        features.n_states,
        features.train,
        features.val,
        ms,
        costs,
    )
