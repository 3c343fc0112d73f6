"""The stages behind every command: extract → score → complementarity → search → config.

This is the one orchestration module: it loads data, extracts (cached) features, and hands
arrays to the pure scorers (``probe``, ``cka``) and to the search, taking a progress
callback so the CLI only renders. Settings travel with the data in one :class:`Options`,
held by the prepared state and stored in the study before its first trial.

Everything is chosen on a validation split carved from train (or the dataset's own): the
test split is never looked at here, so the recommendation's test accuracy (``apply``) is an
honest estimate. The study keeps the context needed to turn *any* of its trials into a
config (``export``), so a study can be re-read, resumed or exported later from its storage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.sparse import issparse

from autolayer import anchor, zoo
from autolayer.budgets import Budget
from autolayer.complementarity import PairEstimate, estimate_pairs
from autolayer.config import FusionConfig, ModelChoice, library_versions
from autolayer.data import LabelledDataset, load_dataset
from autolayer.errors import ConfigError, DataError
from autolayer.extraction import Embeddings, embed_texts
from autolayer.fidelity import Fidelity, StageClock, StageCost, computed, select
from autolayer.options import Options
from autolayer.probe import LayerScores
from autolayer.search import (
    INFEASIBLE,
    OVER_BUDGET,
    REPEAT,
    Candidate,
    LayerCost,
    SearchResult,
    Space,
    TrialSummary,
    anchor_can_stop,
    guided_trials,
    run_search,
)
from autolayer.sources import make_source

logger = logging.getLogger("autolayer")

DEFAULT_MODELS = ("minilm", "smollm2")  # the neural defaults (zoo aliases)
LEXICAL_DEFAULT = "tfidf"  # always in the default pool: nothing to install
CKA_ROWS = 5000
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
                    "accuracy": float(s.accuracy[i]),
                    "accuracy_std": float(s.accuracy_std[i]),
                    "macro_f1": float(s.macro_f1[i]),
                    "rank": int(np.flatnonzero(s.ranking() == i)[0]) + 1,
                }
                for i in range(self.n_hidden_states)
            ],
        }


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
class Prepared:
    """Inputs of a search: the data and its options, train/validation labels, candidates."""

    data: LabelledDataset
    options: Options  # how the candidates' features were made: export must say the same
    y_train: np.ndarray
    y_val: np.ndarray
    candidates: tuple[Candidate, ...]
    reports: tuple[ModelScores, ...]
    validation: dict
    stages: tuple[StageCost, ...] = ()  # what preparing cost, stage by stage
    dropped: dict = field(default_factory=dict)  # model → why the screen dropped it
    pairs: tuple[PairEstimate, ...] = ()  # every pair of models, at their best layers
    folds: tuple[np.ndarray, ...] = ()  # held-out rows of y_train: cross-validation


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


def default_models() -> list[str]:
    """Installed zoo models among the defaults (the demo must run offline), and TF-IDF."""
    installed = [m for m in DEFAULT_MODELS if zoo.installed_folder(m) is not None]
    return [*(installed or [DEFAULT_MODELS[0]]), LEXICAL_DEFAULT]


def check_pretrained(models: Sequence[str], command: str) -> None:
    """Refuse, before any extraction, sources that learn from the task's texts (TF-IDF):
    ``score`` and ``complementarity`` look at pretrained models' layers."""
    lexical = [m for m in models if make_source(m).sparse]
    if lexical:
        raise ConfigError(
            f"{command} takes pretrained models; {', '.join(lexical)} is fitted on training "
            "rows: use it in recommend, search or apply"
        )


def check_models(models: Sequence[str] | None, *, at_least: int = 1) -> list[str]:
    """The model list, checked: ``None`` is the default pool; empty or repeated is an error."""
    models = default_models() if models is None else list(models)
    if len(models) < at_least:
        raise ConfigError(f"give at least {at_least} model(s); got {len(models)}")
    if len(set(models)) != len(models):
        raise ConfigError(f"models must be distinct; got {', '.join(models)}")
    for model in models:  # a missing model is found before hours of another's extraction
        make_source(model)
    return models


def _data(dataset: str | Path | LabelledDataset) -> LabelledDataset:
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
        texts = [texts[i] for i in rows]
        where += f" ({len(rows)} rows)"
    settings = {"layers": layers, "source": where, **options.extraction()}
    if progress is None:
        return embed_texts(model, texts, **settings)
    with progress(f"{model} · {where}", len(texts)) as advance:
        return embed_texts(model, texts, progress=advance, **settings)


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
    models = check_models([models] if isinstance(models, str) else models)
    check_pretrained(models, "score")
    data = _data(dataset)
    labels = data.split(split).labels
    check_folds(len(labels), n_folds)
    out = []
    for model in models:
        emb = embed(model, data, split, options, progress)
        X = np.asarray(emb.array)
        probe = {"n_folds": n_folds, "max_examples": max_examples, "device": options.device}
        run = probe_layers(X, labels, seed=options.seed, **probe)
        stability = None
        if max_examples is not None and max_examples < len(labels):
            other = probe_layers(X, labels, seed=options.seed + 1, **probe)
            stability = rank_agreement(run.accuracy, other.accuracy)
        out.append(ModelScores(model, emb.meta["n_hidden_states"], run, stability))
    return out


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
    models = check_models(models, at_least=2)
    check_pretrained(models, "complementarity")
    data = _data(dataset)
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
            )
            chosen.append(probe.best_layer)
    at_layers = {m: arrays[m][:, layer] for m, layer in zip(models, chosen, strict=True)}
    matrix = cka_matrix(at_layers, debiased=debiased)
    grids = {
        (a, b): cka_grid(arrays[a], arrays[b], debiased=debiased, device=options.device)
        for i, a in enumerate(models)
        for b in models[i + 1 :]
    }
    pairs = _estimates(at_layers, labels[rows], options)
    return Complementarity(tuple(models), tuple(chosen), matrix, grids, len(rows), debiased, pairs)


def _split_rows(data: LabelledDataset, options: Options) -> _Rows:
    """Search-train and validation rows: a source validation split when there is one, a
    carved one otherwise, or none under cross-validation (every row trains and, in its
    fold, validates)."""
    every = np.arange(len(data.split("train")))
    if options.cv_folds is not None:
        return _Rows(data, every, np.empty(0, dtype=np.int64), external=False)
    if "validation" in data.splits:
        return _Rows(data, every, np.empty(0, dtype=np.int64), external=True)
    train, val = data.train_validation(size=options.validation_size, seed=options.seed)
    return _Rows(data, train, val, external=False)


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
    :func:`study_pool`) overrides that decision for a study being resumed: a pool of more
    models keeps every model, and the anchor alone keeps the anchor alone.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1; got {top_k}")
    options = resolve_options(options, settings)
    data = _data(dataset)
    models = check_models(models)
    options = replace(options, anchor=_anchor(options, models))
    rows = _split_rows(data, options)
    if options.cv_folds is not None:
        options = _fit_folds(data, rows.y_train, options)
    clock = StageClock()
    unread = {}
    if options.anchor is not None and len(models) > 1:
        if list(resumed_pool) == [options.anchor]:
            reason = "not extracted: the study being resumed holds the anchor alone"
        elif anchor_budget is None or len(resumed_pool) > 1:
            reason = None
        else:
            reason = _unbeaten_anchor(data, rows, options, anchor_budget, clock, progress)
        if reason is not None:
            unread = {name: reason for name in models if name != options.anchor}
            models = [options.anchor]
    if fidelity is not None and fidelity.screens(len(rows.train)):
        fidelity.check(len(rows.train), len(data.label_names))
        features, dropped, pairs = _screened(
            data, models, rows, options, top_k, fidelity, clock, progress
        )
    else:
        features = [
            _exhaustive(data, name, rows, options, top_k, probe_max_examples, clock, progress)
            for name in models
        ]
        dropped, pairs = {}, ()
        if len(features) > 1:
            with clock.stage("pairs", f"each pair probed on ≤ {PAIR_ROWS} rows"):
                pairs = _pairs(features, rows.y_train, options)
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

        folds = tuple(stratified_folds(rows.y_train, options.cv_folds, options.seed))
        validation["cv_folds"] = len(folds)
    return Prepared(
        data,
        options,
        rows.y_train,
        rows.y_val,
        candidates,
        reports,
        validation,
        clock.costs(),
        {**unread, **dropped},
        pairs,
        folds,
    )


def anchor_budget(budget: Budget, space: Space, multi_objective: bool = False) -> Budget | None:
    """``budget``, for :func:`prepare`'s early skip, when an unbeatable anchor may end that
    search (:func:`autolayer.search.anchor_can_stop`); else None. One rule for ``recommend``
    and ``search``, so the same command makes the same study."""
    return budget if anchor_can_stop(budget, space, multi_objective) else None


def default_storage(output_dir: str | Path) -> str:
    """The study database of an output folder."""
    return f"sqlite:///{(Path(output_dir) / 'study.db').resolve()}"


def study_pool(storage: str, study_name: str | None) -> tuple[str, ...]:
    """The models of the stored study a run will resume (none for a new study, or a name
    left to be derived from the pool): :func:`prepare` keeps a resumed study's pool whole,
    or the anchor alone, whatever the early skip would decide under this budget. Never
    creates a storage; a storage that cannot be opened is an error here, before any work."""
    from autolayer.search import make_storage, missing_sqlite_file

    if study_name is None or missing_sqlite_file(storage):
        return ()
    opened = make_storage(storage)
    try:
        attrs = opened.get_study_user_attrs(opened.get_study_id_from_name(study_name))
    except KeyError:
        return ()
    return tuple((attrs.get("context") or {}).get("models") or {})


def _anchor(options: Options, models: Sequence[str]) -> str | None:
    """The resolved anchor (as the pool spells it), or None: the anchor rule judges trials
    by their scores over every held-out row of a cross-validation, so only
    cross-validation has one."""
    if options.cv_folds is None:
        if options.anchor not in (None, anchor.AUTO, anchor.NONE):
            raise ConfigError(
                f"anchor {options.anchor!r} needs cross-validation (labels_per_class or cv_folds)"
            )
        return None
    return anchor.resolve(options.anchor, models)


def _unbeaten_anchor(data, rows, options, budget: Budget, clock, progress) -> str | None:
    """Why the other models need not be extracted, when the anchor's cross-validated score
    (its last layer, linear head, as its trial will score it) is out of reach of every
    trial ``budget`` allows and the anchor meets the budget's limits; else None.

    Every layer is kept, not only the last: the forward pass runs the whole backbone for
    the last layer anyway, and when the search goes on it reads them from the cache."""
    from autolayer.fusion import FusionParams, cross_validate
    from autolayer.probe import folds as stratified_folds

    with clock.stage("anchor", "the anchor's last layer, cross-validated") as count:
        train = embed(options.anchor, data, "train", options, progress)
        count(computed(train.meta, len(train.layers)))
        x = np.asarray(train.array[rows.train])[:, -1]
        folds = stratified_folds(rows.y_train, options.cv_folds, options.seed)
        params = FusionParams(operator="concat", metric=options.metric, head="linear")
        score = cross_validate(
            [x],
            rows.y_train,
            folds,
            params=params,
            seed=options.seed,
            n_classes=len(data.label_names),
        ).best_val_metric
    n = len(rows.y_train)
    if not anchor.unbeatable(score, n, budget.n_trials):
        return None
    if budget.violations(_anchor_cost(options.anchor, train, x, len(data.label_names))):
        return None  # its trial would be infeasible: the search must find another
    return (
        f"not extracted: the anchor's CV score {score:.4f} on {n} texts is out of reach of "
        f"the {budget.n_trials} trials' margin"
    )


def _anchor_cost(name: str, train, x: np.ndarray, n_classes: int):
    """What the anchor's trial (its last layer, linear head) costs, priced as the search
    prices it (:func:`autolayer.search.cost_of`)."""
    from autolayer.search import cost_of

    last = train.meta["n_hidden_states"] - 1
    features = _Features(
        name, last + 1, (last,), None, x[:, None], x[:0, None], _ms_per_text(train.meta)
    )
    space = Space()
    return cost_of(
        [_candidate(features)],
        [last],
        "concat",
        min(space.widths),
        space.hidden,
        n_classes,
        len(x),
        "linear",
    )


def _searched(name: str, scores: LayerScores, options: Options, top_k: int) -> tuple[int, ...]:
    """A model's layers offered to the search: its top-k by probe, and the anchor's last
    layer (the trial every other must beat clearly)."""
    top = tuple(int(i) for i in scores.ranking(options.metric)[:top_k])
    last = len(scores.accuracy) - 1
    return top + (last,) if name == options.anchor and last not in top else top


def _fit_folds(data: LabelledDataset, y_train: np.ndarray, options: Options) -> Options:
    """Before any extraction: refuse a class that no fold could both train and judge, and
    use no more folds than the rarest class has examples (said once, here, and recorded
    in the study as the folds that ran, so a 5-fold request that ran 3 folds is the same
    study as a 3-fold one)."""
    counts = np.bincount(y_train, minlength=len(data.label_names))
    rarest = int(np.argmin(counts))
    if counts[rarest] < 2:
        raise DataError(
            f"dataset {data.name!r}: cross-validation needs 2 or more examples of every class; "
            f"class {data.label_names[rarest]!r} has {counts[rarest]}"
        )
    if counts[rarest] >= options.cv_folds:
        return options
    logger.warning(
        "cross-validation over %d folds, not %d: class %r has %d training examples",
        counts[rarest],
        options.cv_folds,
        data.label_names[rarest],
        counts[rarest],
    )
    return replace(options, cv_folds=int(counts[rarest]))


class _Rows:
    """Which rows of the train split train the heads and which validate them (``external``:
    the source's validation split validates instead)."""

    def __init__(
        self, data: LabelledDataset, train: np.ndarray, val: np.ndarray, *, external: bool
    ) -> None:
        labels = data.split("train").labels
        self.train, self.val, self.external = train, val, external
        self.y_train = labels[train]
        self.y_val = data.split("validation").labels if external else labels[val]


@dataclass(frozen=True)
class _Features:
    """One model's top-k layer features for the search, and where they were scored."""

    name: str
    n_states: int
    top: tuple[int, ...]
    scores: LayerScores
    train: np.ndarray  # [n_train, k, D], or sparse [n_train, V] for a sparse source
    val: np.ndarray  # [n_val, k, D], or sparse [n_val, V]
    ms_per_text: float  # measured full-depth extraction time
    memory_mb: float | None = None  # a fitted source's own (its vocabulary); None: as priced


def _ms_per_text(meta: dict) -> float:
    return 1000 * meta["seconds"] / max(meta["computed_rows"], 1)


def _exhaustive(data, name, rows, options, top_k, probe_max_examples, clock, progress):
    """Every layer on every training row, probed on (a sample of) the search-train rows."""
    from autolayer.probe import probe_layers

    if make_source(name).sparse:
        with clock.stage("extract", "every layer, every row"):
            x_train, x_val, ms, memory = _lexical(data, name, rows)
        with clock.stage("probe", "every layer"):
            scores = probe_layers(
                x_train,
                rows.y_train,
                n_folds=options.cv_folds or PROBE_FOLDS,
                seed=options.seed,
                max_examples=probe_max_examples,
            )
        return _Features(name, 1, (0,), scores, x_train, x_val, ms, memory)
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
        )
    top = _searched(name, scores, options, top_k)
    keep = list(top)
    n_states = train.meta["n_hidden_states"]
    ms = _ms_per_text(train.meta)
    return _Features(name, n_states, top, scores, x_train[:, keep], x_val[:, keep], ms)


def _lexical(data: LabelledDataset, name: str, rows: _Rows):
    """A sparse source (TF-IDF) fitted on the search-train rows only, then applied to those
    and the validation rows: (train ``[n_train, V]``, validation, ms per text, memory MB)."""
    texts = data.split("train").texts
    source = make_source(name).fit([texts[i] for i in rows.train])
    matrix = source.transform(texts)
    ms, memory = source.transform_ms, source.memory_mb(0)
    if not rows.external:
        return matrix[rows.train], matrix[rows.val], ms, memory
    return matrix[rows.train], source.transform(data.split("validation").texts), ms, memory


def _screened(data, models, rows, options, top_k, fidelity, clock, progress):
    """Screen every model on a sample, drop the clearly worse, complete the survivors."""
    from autolayer.probe import probe_layers
    from autolayer.sampling import stratified_rows

    pick = stratified_rows(rows.y_train, fidelity.screen_size, options.seed, per_class=1)
    screen = rows.train[pick]  # sorted rows of the train split
    screened, scores, lexical = {}, {}, {}
    for name in models:
        if make_source(name).sparse:  # cheap: fitted and applied to every row at once
            with clock.stage("screen", f"every layer, {len(screen)} rows"):
                lexical[name] = _lexical(data, name, rows)
                screened[name] = lexical[name][0][pick]
                scores[name] = probe_layers(
                    screened[name], rows.y_train[pick], n_folds=fidelity.n_folds, seed=options.seed
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
            )
        screened[name] = emb
    with clock.stage("select", "each pair probed on the screen"):
        best = {name: scores[name].ranking(options.metric)[0] for name in models}
        pairs = _estimates(
            {
                name: emb if name in lexical else emb.layer(int(best[name]))
                for name, emb in screened.items()
            },
            rows.y_train[pick],
            options,
            fidelity.n_folds,
        )
        survivors, dropped = select(scores, options.metric, fidelity, pairs)
        if dropped.pop(options.anchor, None) is not None:  # the anchor is always searched
            survivors = [name for name in models if name in survivors or name == options.anchor]
    rest = np.setdiff1d(rows.train, screen)
    features = []
    for name in survivors:
        if name in lexical:
            features.append(_Features(name, 1, (0,), scores[name], *lexical[name]))
            continue
        top = _searched(name, scores[name], options, top_k)
        with clock.stage("complete", "other rows, survivors, up to their top-k layers") as count:
            x_train, x_val = _complete(
                data, name, rows, screen, rest, screened[name], top, options, progress, count
            )
        meta = screened[name].meta
        features.append(
            _Features(
                name,
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
    features: Sequence[_Features], y_train: np.ndarray, options: Options
) -> tuple[PairEstimate, ...]:
    """Pair estimates at each model's best layer on a stratified sample of search-train rows."""
    from autolayer.sampling import stratified_rows

    sample = np.arange(len(y_train))
    if len(sample) > PAIR_ROWS:
        sample = stratified_rows(y_train, PAIR_ROWS, options.seed, per_class=1)
    at_best = {
        f.name: f.train[sample] if issparse(f.train) else f.train[sample, 0] for f in features
    }
    return _estimates(at_best, y_train[sample], options)


def _estimates(
    features: dict[str, np.ndarray], y: np.ndarray, options: Options, n_folds: int = 5
) -> tuple[PairEstimate, ...]:
    if len(features) < 2:
        return ()
    return tuple(
        estimate_pairs(features, y, n_folds=n_folds, seed=options.seed, device=options.device)
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
    source = make_source(features.name)
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


def study_context(prepared: Prepared, space: Space) -> dict:
    """What export needs besides a trial's parameters, stored as a study attribute before
    the first trial (so an interrupted first run can be exported too)."""
    options = prepared.options
    models = {}
    for cand in prepared.candidates:
        models[cand.name] = {
            "identity": make_source(cand.name).identity,
            "n_hidden_states": cand.n_hidden_states,
            "pooling": options.pooling,
            "max_length": options.max_length,
        }
    return {
        "models": models,
        "label_names": list(prepared.data.label_names),
        "dataset": {
            "name": prepared.data.name,
            "fingerprint": prepared.data.fingerprint,
            "validation": prepared.validation,
            **({"draw": prepared.data.draw} if prepared.data.draw else {}),
        },
        "head": {"hidden": space.hidden, "dropout": space.dropout, "batch_size": 100},
        "options": options.results(),
        "metric": options.metric,
        "seed": options.seed,
    }


def study_identity(context: dict) -> dict:
    """What makes two runs the same study: trials of another dataset, validation split,
    model pool or feature settings are not comparable, so such a study is refused."""
    validation = context["dataset"]["validation"]
    split = {k: validation[k] for k in ("seed", "n_train", "n_val", "cv_folds") if k in validation}
    # the option, whichever split validated: studies have always been identified by it
    size = (context.get("options") or {}).get("validation_size", validation.get("size"))
    return {
        "dataset fingerprint": context["dataset"]["fingerprint"],
        "validation split": {**({"size": size} if size is not None else {}), **split},
        "model pool": {name: info["identity"] for name, info in context["models"].items()},
        "features (pooling, max_length)": sorted(
            {(info["pooling"], info["max_length"]) for info in context["models"].values()}
        ),
        # which trial the others must beat: the same trials, judged by another rule
        "anchor": (context.get("options") or {}).get("anchor"),
    }


def default_space(options: Options) -> Space:
    """The search space: with cross-validation (few labels) the linear head is offered
    beside the MLP, which a handful of labels per class cannot train as well (measured in
    ``studies/fewshot``)."""
    return Space(heads=("mlp", "linear")) if options.cv_folds is not None else Space()


def default_study_name(prepared: Prepared) -> str:
    """Named by data and models (and folds and anchor, under cross-validation): a run
    judged another way is another study, not a refused resume."""
    names = ",".join(c.name for c in prepared.candidates)
    key = f"{prepared.data.fingerprint}|{names}"
    if prepared.options.cv_folds is not None:
        key += f"|cv{prepared.options.cv_folds}"
    if prepared.options.anchor is not None:
        key += f"|anchor={prepared.options.anchor}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"autolayer-{prepared.data.name}-{digest}"


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
    :func:`autolayer.search.guided_trials`).

    A stored study of the same name made for other data, models, metric or objectives is
    refused before any training (see :func:`autolayer.search.run_search`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(output_dir)
    study_name = study_name or default_study_name(prepared)
    space = space or default_space(prepared.options)
    context = study_context(prepared, space)
    return run_search(
        prepared.candidates,
        prepared.y_train,
        prepared.y_val,
        storage=storage,
        study_name=study_name,
        budget=budget,
        space=space,
        metric=prepared.options.metric,
        seed=prepared.options.seed,
        multi_objective=multi_objective,
        prune=prune,
        callbacks=callbacks,
        heartbeat=heartbeat,
        context=context,
        identity=study_identity(context),
        first=_anchor_trial(prepared, space)
        + (guided_trials(prepared.candidates, prepared.pairs, space) if guide else []),
        folds=prepared.folds,
    )


def _anchor_trial(prepared: Prepared, space: Space) -> list[dict]:
    """The anchor's trial, run first: every other trial is judged against it."""
    name = prepared.options.anchor
    found = [c for c in prepared.candidates if c.name == name]
    if not found or "linear" not in space.heads:
        return []
    return [anchor.trial_params(name, found[0].n_hidden_states, space.heads)]


def trial_config(trial: TrialSummary, context: dict, study_name: str, storage: str) -> FusionConfig:
    """Build the exportable config of one trial from its parameters and the study context."""
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
    head = context["head"]
    return FusionConfig(
        models=tuple(models),
        operator=trial.operator,
        width=trial.width,
        hidden=head["hidden"],
        dropout=head["dropout"],
        lr=trial.lr,
        batch_size=head["batch_size"],
        epochs=int(trial.attrs.get("best_epoch", 0)) + 1,
        label_names=tuple(context["label_names"]),
        head=trial.head,
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

    from autolayer.search import collect, open_existing_storage, summarise_trial

    if storage is None:
        if output_dir is None:
            raise ConfigError(
                "give the output folder of search/recommend, or --storage and --study-name"
            )
        storage = default_storage(output_dir)
    opened = open_existing_storage(storage, study_name)
    names = sorted(s.study_name for s in opened.get_all_studies())
    if study_name is None and len(names) == 1:
        study_name = names[0]
    elif study_name is None and output_dir is not None:
        study_name = _recommended_study(Path(output_dir))
    if study_name not in names:
        asked = "pass --study-name" if study_name is None else f"no study named {study_name!r}"
        raise ConfigError(f"{asked}; studies in {storage}: {', '.join(names) or 'none'}")
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
    return ""


def _recommended_study(output_dir: Path) -> str | None:
    """The study the folder's recommendation came from (a folder may hold several)."""
    from autolayer.config import load_config

    path = output_dir / RECOMMENDATION
    if not path.is_file():
        return None
    try:
        return load_config(path).validation.get("study")
    except ConfigError:
        return None


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


def reasons(prepared: Prepared, result: SearchResult, cka: np.ndarray) -> list[str]:
    """Short sentences that say why the recommendation looks the way it does."""
    out = []
    for report in prepared.reports:
        if report.n_hidden_states == 1:  # one state (TF-IDF): no layer to choose
            continue
        best, last = report.best_layer, report.last_layer
        metric = prepared.options.metric
        score = getattr(report.scores, metric)
        gap = 100 * (score[best] - score[last])
        error = 100 * _gap_error(report, best, metric)
        name = metric.replace("_", "-")
        if best == last:
            out.append(f"{report.model}: the last layer ({last}) is its best layer by probe")
        elif abs(gap) <= 2 * error:
            out.append(
                f"{report.model}: layer {best}/{last} and the last layer differ by {gap:+.1f} "
                f"± {error:.1f} pt of probe {name}, within two standard errors: no clear best"
            )
        else:
            out.append(
                f"{report.model}: layer {best}/{last} beats the last layer by {gap:.1f} "
                f"± {error:.1f} pt (probe CV {name} {100 * score[best]:.1f}% "
                f"vs {100 * score[last]:.1f}%)"
            )
    names = [c.name for c in prepared.candidates]
    best = result.best
    if len(best.models) > 1:
        i, j = names.index(best.models[0]), names.index(best.models[1])
        out.append(_pair_reason(prepared.pairs, best.models, cka[i, j]))
    singles = [
        t
        for t in result.trials
        if t.state == "COMPLETE" and len(t.models) == 1 and OVER_BUDGET not in t.attrs
    ]
    top_single = max(singles, key=lambda t: t.value) if singles else None
    if top_single is not None and len(best.models) > 1 and best.value > top_single.value:
        out.append(
            f"fusion ({best.operator}) beats the best single-model trial "
            f"({top_single.models[0]} layer {top_single.layers[0]}) by "
            f"{100 * (best.value - top_single.value):.1f} pt on validation"
        )
    return out


def _gap_error(report: ModelScores, layer: int, metric: str) -> float:
    """Standard error of a layer's probe score minus the last layer's, from their spread
    over the folds (as if independent): on a few dozen texts it is often larger than the
    gap itself."""
    std = getattr(report.scores, f"{metric}_std")
    spread = std[layer] ** 2 + std[report.last_layer] ** 2
    return float(np.sqrt(spread / max(report.scores.n_folds, 1)))


def _pair_reason(pairs: Sequence[PairEstimate], models: Sequence[str], similarity: float) -> str:
    """What the screen's probe said about the chosen pair (CKA only as similarity)."""
    a, b = models[:2]
    found = [p for p in pairs if set(p.models) == {a, b}]
    if not found:
        return f"{a} + {b}: linear CKA similarity {similarity:.2f}"  # no estimate was made
    pair = found[0]
    cka = "" if np.isnan(similarity) else f"; linear CKA similarity {similarity:.2f}"
    return (
        f"{a} + {b}: a linear probe on both scores {100 * pair.gain:+.1f} "
        f"± {100 * pair.gain_se:.1f} pt against the better alone on {pair.n_examples:,} "
        f"held-out rows{cka}"
    )


RECOMMENDATION = "recommendation.yaml"
PLOTS = {"layers.png", "cka.png"}  # what report.recommendation draws into the output folder


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
    cannot pick a layer reliably, so a default has to be beaten clearly."""
    if max_train_samples is not None and labels_per_class is not None:
        raise ConfigError("give max_train_samples or labels_per_class, not both")
    if max_train_samples is not None:
        data = data.subsample(max_train_samples, seed=options.seed)
    if labels_per_class is not None:
        data = data.per_class(labels_per_class, seed=options.seed)
        if options.cv_folds is None:
            options = replace(options, cv_folds=max(2, min(5, labels_per_class)))
        if options.anchor is None:
            options = replace(options, anchor=anchor.AUTO)
    return data, options


def check_output_dir(output_dir: Path, data: LabelledDataset, *, overwrite: bool) -> None:
    """Refuse to overwrite a recommendation made for other data (or a file autolayer did
    not write) in ``output_dir``; found before extraction, not after an hour of it."""
    import yaml

    from autolayer.files import OURS, check_writable

    check_writable(output_dir, "output folder")
    for plot in (PLOTS & {p.name for p in output_dir.glob("*.png")}) if output_dir.is_dir() else ():
        if not OURS["plot"](output_dir / plot):
            raise ConfigError(
                f"{output_dir / plot} exists and is not a plot autolayer wrote; move it or "
                "choose another output folder"
            )
    path = output_dir / RECOMMENDATION
    if not path.exists():
        return
    try:
        previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        fingerprint = previous["dataset"]["fingerprint"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        raise ConfigError(
            f"{path} exists and is not an autolayer recommendation; move it or choose another "
            "output folder"
        ) from None
    if fingerprint != data.fingerprint and not overwrite:
        raise ConfigError(
            f"{path} was made for {_other_data(previous['dataset'], data)}; choose another "
            "output folder, or pass --overwrite to replace it"
        )


def _other_data(previous: dict, data: LabelledDataset) -> str:
    """What differs: another draw of the same data (few labels), or other data."""
    draw = previous.get("draw") or {}
    source = draw.get("source_fingerprint", previous["fingerprint"])
    if draw and source == (data.draw or {}).get("source_fingerprint", data.fingerprint):
        return (
            f"another draw of the same data ({draw.get('labels_per_class')} labels per class, "
            f"seed {draw.get('seed')})"
        )
    return f"other data ({previous.get('name', '?')}, fingerprint {str(source)[:12]})"


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

    Multi-fidelity by default (``fidelity=None``: every layer of every model on every row,
    as an exhaustive sweep would). ``max_train_samples`` caps the training split (a
    stratified, seeded sample); ``labels_per_class`` keeps that many seeded labels of
    every class instead (few-label mode: configurations are then judged by
    ``min(5, labels_per_class)``-fold cross-validation over the draw unless
    ``cv_folds`` says otherwise). ``options`` (or keyword ``settings``: ``seed=1``,
    ``max_length=128``…) as in :func:`prepare`. An ``output_dir`` whose recommendation was
    made for other data is refused before any work unless ``overwrite`` (its study database
    is kept either way: studies are keyed by data and models, so several live side by side).
    """
    data, options = restrict(
        _data(dataset),
        resolve_options(options, settings),
        max_train_samples=max_train_samples,
        labels_per_class=labels_per_class,
    )
    check_output_dir(Path(output_dir), data, overwrite=overwrite)
    budget = budget or Budget()
    space = space or default_space(options)
    prepared = prepare(
        data,
        models,
        options=options,
        top_k=top_k,
        fidelity=fidelity,
        progress=progress,
        anchor_budget=anchor_budget(budget, space, multi_objective),
        resumed_pool=study_pool(storage or default_storage(output_dir), study_name),
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
    searched = StageCost("search", time.process_time() - started, 0, f"{trained} heads trained")
    context = study_context(prepared, space)
    config = trial_config(result.best, context, result.study_name, result.storage)
    config.save(Path(output_dir) / RECOMMENDATION)
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
