"""The pipeline behind ``autolayer recommend``: extract → score → CKA → search → config.

Everything is chosen on a validation split carved from train (or the dataset's own): the
test split is never looked at here, so the recommendation's test accuracy (``apply``) is an
honest estimate. The study keeps the context needed to turn *any* of its trials into a
config (``export``), so a study can be re-read, resumed or exported later from its storage.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolayer import zoo
from autolayer.config import FusionConfig, ModelChoice, library_versions
from autolayer.data import LabelledDataset, load_dataset
from autolayer.errors import ConfigError
from autolayer.extraction import Embeddings, extract
from autolayer.search import Budget, Candidate, SearchResult, Space, TrialSummary, run_search

logger = logging.getLogger("autolayer")

DEFAULT_MODELS = ("minilm", "smollm2")
CKA_ROWS = 5000
ProgressFactory = Callable[[str, int], object]


@dataclass(frozen=True)
class ModelReport:
    """What the scorer found for one model."""

    name: str
    n_hidden_states: int
    accuracy: np.ndarray  # [L+1] probe CV accuracy on the search-train rows
    accuracy_std: np.ndarray
    macro_f1: np.ndarray
    candidates: tuple[int, ...]  # top-k layers offered to the search
    ms_per_text: float

    @property
    def best_layer(self) -> int:
        return int(self.candidates[0])

    @property
    def last_layer(self) -> int:
        return self.n_hidden_states - 1


@dataclass(frozen=True)
class Prepared:
    """Inputs of a search: the data, its train/validation rows and the model candidates."""

    data: LabelledDataset
    y_train: np.ndarray
    y_val: np.ndarray
    candidates: tuple[Candidate, ...]
    reports: tuple[ModelReport, ...]
    validation: dict
    pooling: str = "mean"  # how the candidates' features were made: export must say the same
    max_length: int = 256


@dataclass(frozen=True)
class Recommendation:
    config: FusionConfig
    search: SearchResult
    reports: tuple[ModelReport, ...]
    cka_names: tuple[str, ...]
    cka: np.ndarray  # [M, M] at each model's best layer
    reasons: tuple[str, ...]


def default_models() -> list[str]:
    """Installed zoo models among the defaults (the demo must run offline)."""
    installed = [m for m in DEFAULT_MODELS if zoo.installed_folder(m) is not None]
    return installed or [DEFAULT_MODELS[0]]


def _split_rows(data: LabelledDataset, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if "validation" in data.splits:
        return np.arange(len(data.split("train"))), np.empty(0, dtype=np.int64)
    return data.train_validation(size=size, seed=seed)


def prepare(
    dataset: str | Path | LabelledDataset = "demo",
    models: Sequence[str] | None = None,
    *,
    top_k: int = 3,
    metric: str = "accuracy",
    validation_size: float = 0.2,
    probe_max_examples: int | None = 4000,
    seed: int = 0,
    pooling: str = "mean",
    max_length: int = 256,
    cache_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
) -> Prepared:
    """Extract (cached) every layer of every model, probe the layers, keep each top-k."""
    from autolayer.probe import probe_layers

    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1; got {top_k}")
    data = dataset if isinstance(dataset, LabelledDataset) else load_dataset(dataset)
    models = default_models() if models is None else list(models)
    if not models:
        raise ConfigError("models must name at least one model (None: the default pool)")
    if len(set(models)) != len(models):
        raise ConfigError(f"models must be distinct; got {', '.join(models)}")
    train_rows, val_rows = _split_rows(data, validation_size, seed)
    labels = data.split("train").labels
    y_train = labels[train_rows]
    y_val = labels[val_rows] if len(val_rows) else data.split("validation").labels
    candidates, reports = [], []
    for name in models:
        train = _embed(name, data, "train", pooling, max_length, cache_dir, progress)
        x_train = np.asarray(train.array[train_rows])
        if len(val_rows):
            x_val = np.asarray(train.array[val_rows])
        else:
            x_val = np.asarray(
                _embed(name, data, "validation", pooling, max_length, cache_dir, progress).array
            )
        scores = probe_layers(x_train, y_train, seed=seed, max_examples=probe_max_examples)
        top = tuple(int(i) for i in scores.ranking(metric)[:top_k])
        n_states = train.meta["n_hidden_states"]
        source = zoo.resolve(name)
        base, per_layer = zoo.parameter_counts(source.folder, n_states - 1)
        ms = 1000 * train.meta["seconds"] / max(train.meta["computed_rows"], 1)
        keep = list(top)
        candidates.append(
            Candidate(name, top, n_states, x_train[:, keep], x_val[:, keep], ms, base, per_layer)
        )
        reports.append(
            ModelReport(
                name, n_states, scores.accuracy, scores.accuracy_std, scores.macro_f1, top, ms
            )
        )
    validation = {
        "size": validation_size,
        "seed": seed,
        "n_train": len(y_train),
        "n_val": len(y_val),
    }
    return Prepared(
        data, y_train, y_val, tuple(candidates), tuple(reports), validation, pooling, max_length
    )


def _embed(name, data, split, pooling, max_length, cache_dir, progress) -> Embeddings:
    options = {"pooling": pooling, "max_length": max_length, "cache_dir": cache_dir}
    if progress is None:
        return extract(name, data, split, **options)
    with progress(f"{name} · {data.name}/{split}", len(data.split(split))) as advance:
        return extract(name, data, split, progress=advance, **options)


def study_context(prepared: Prepared, space: Space, metric: str, seed: int) -> dict:
    """What export needs besides a trial's parameters, stored as a study attribute before
    the first trial (so an interrupted first run can be exported too)."""
    models = {}
    for cand in prepared.candidates:
        models[cand.name] = {
            "identity": zoo.resolve(cand.name).identity,
            "n_hidden_states": cand.n_hidden_states,
            "pooling": prepared.pooling,
            "max_length": prepared.max_length,
        }
    return {
        "models": models,
        "label_names": list(prepared.data.label_names),
        "dataset": {
            "name": prepared.data.name,
            "fingerprint": prepared.data.fingerprint,
            "validation": prepared.validation,
        },
        "head": {"hidden": space.hidden, "dropout": space.dropout, "batch_size": 100},
        "metric": metric,
        "seed": seed,
    }


def study_identity(context: dict) -> dict:
    """What makes two runs the same study: trials of another dataset, validation split,
    model pool or feature settings are not comparable, so such a study is refused."""
    return {
        "dataset fingerprint": context["dataset"]["fingerprint"],
        "validation split": {
            k: context["dataset"]["validation"][k] for k in ("size", "seed", "n_train", "n_val")
        },
        "model pool": {name: info["identity"] for name, info in context["models"].items()},
        "features (pooling, max_length)": sorted(
            {(info["pooling"], info["max_length"]) for info in context["models"].values()}
        ),
    }


def default_study_name(prepared: Prepared) -> str:
    names = ",".join(c.name for c in prepared.candidates)
    digest = hashlib.sha256(f"{prepared.data.fingerprint}|{names}".encode()).hexdigest()[:8]
    return f"autolayer-{prepared.data.name}-{digest}"


def search(
    prepared: Prepared,
    *,
    output_dir: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    budget: Budget | None = None,
    space: Space | None = None,
    metric: str = "accuracy",
    seed: int = 0,
    multi_objective: bool = False,
    prune: bool = True,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
) -> SearchResult:
    """Run or resume the Optuna study over the prepared candidates.

    A stored study of the same name made for other data, models, metric or objectives is
    refused before any training (see :func:`autolayer.search.run_search`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    study_name = study_name or default_study_name(prepared)
    space = space or Space()
    context = study_context(prepared, space, metric, seed)
    return run_search(
        prepared.candidates,
        prepared.y_train,
        prepared.y_val,
        storage=storage,
        study_name=study_name,
        budget=budget,
        space=space,
        metric=metric,
        seed=seed,
        multi_objective=multi_objective,
        prune=prune,
        callbacks=callbacks,
        heartbeat=heartbeat,
        context=context,
        identity=study_identity(context),
    )


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

    from autolayer.search import collect, open_existing_storage

    if storage is None:
        if output_dir is None:
            raise ConfigError(
                "give the output folder of search/recommend, or --storage and --study-name"
            )
        storage = f"sqlite:///{(Path(output_dir) / 'study.db').resolve()}"
    opened = open_existing_storage(storage, study_name)
    names = sorted(s.study_name for s in opened.get_all_studies())
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        asked = "pass --study-name" if study_name is None else f"no study named {study_name!r}"
        raise ConfigError(f"{asked}; studies in {storage}: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=opened)
    context = study.user_attrs.get("context")
    if context is None:
        raise ConfigError(f"study {study_name!r} was not made by autolayer (no context attribute)")
    result = collect(study, storage)
    if trial_number is None:
        return trial_config(result.best, context, study_name, storage)
    for trial in result.trials:
        if trial.number == trial_number:
            if trial.state != "COMPLETE":
                raise ConfigError(f"trial {trial_number} is {trial.state}, not COMPLETE")
            return trial_config(trial, context, study_name, storage)
    raise ConfigError(f"study {study_name!r} has no trial {trial_number}")


def cka_at_best(prepared: Prepared) -> np.ndarray:
    """Model × model linear CKA at each model's best layer (on ≤ 5,000 train rows)."""
    from autolayer.cka import cka_matrix

    rows = slice(0, min(CKA_ROWS, len(prepared.y_train)))
    return cka_matrix({c.name: c.train[rows, 0] for c in prepared.candidates})


def reasons(prepared: Prepared, result: SearchResult, cka: np.ndarray) -> list[str]:
    """Short sentences that say why the recommendation looks the way it does."""
    out = []
    for report in prepared.reports:
        best, last = report.best_layer, report.last_layer
        gap = 100 * (report.accuracy[best] - report.accuracy[last])
        if best == last:
            out.append(f"{report.name}: the last layer ({last}) is its best layer by probe")
        else:
            out.append(
                f"{report.name}: layer {best}/{last} beats the last layer by {gap:.1f} pt "
                f"(probe CV accuracy {100 * report.accuracy[best]:.1f}% "
                f"vs {100 * report.accuracy[last]:.1f}%)"
            )
    names = [c.name for c in prepared.candidates]
    best = result.best
    if len(best.models) > 1:
        i, j = names.index(best.models[0]), names.index(best.models[1])
        out.append(
            f"{best.models[0]} + {best.models[1]} CKA {cka[i, j]:.2f} (lower = more complementary)"
        )
    singles = [t for t in result.trials if t.state == "COMPLETE" and len(t.models) == 1]
    if singles and len(best.models) > 1:
        top_single = max(singles, key=lambda t: t.value)
        out.append(
            f"fusion ({best.operator}) beats the best single-model trial "
            f"({top_single.models[0]} layer {top_single.layers[0]}) by "
            f"{100 * (best.value - top_single.value):.1f} pt on validation"
        )
    return out


RECOMMENDATION = "recommendation.yaml"


def check_output_dir(output_dir: Path, data: LabelledDataset, *, overwrite: bool) -> None:
    """Refuse to overwrite a recommendation made for other data (or a file autolayer did
    not write) in ``output_dir``; found before extraction, not after an hour of it."""
    import yaml

    from autolayer.files import check_writable

    check_writable(output_dir, "output folder")
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
            f"{path} was made for other data ({previous['dataset'].get('name', '?')}, "
            f"fingerprint {str(fingerprint)[:12]}); choose another output folder, or pass "
            "--overwrite to replace it"
        )


def recommend(
    dataset: str | Path | LabelledDataset = "demo",
    models: Sequence[str] | None = None,
    *,
    output_dir: str | Path = "autolayer-out",
    budget: Budget | None = None,
    space: Space | None = None,
    top_k: int = 3,
    metric: str = "accuracy",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    multi_objective: bool = False,
    pooling: str = "mean",
    max_length: int = 256,
    cache_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
    callbacks: Sequence[Callable] = (),
    heartbeat: float = 30.0,
    overwrite: bool = False,
) -> Recommendation:
    """extract → score → CKA → search; writes ``recommendation.yaml`` in ``output_dir``.

    An ``output_dir`` whose recommendation was made for other data is refused before any
    work unless ``overwrite`` (its study database is kept either way: studies are keyed by
    data and models, so several live side by side in one file).
    """
    data = dataset if isinstance(dataset, LabelledDataset) else load_dataset(dataset)
    check_output_dir(Path(output_dir), data, overwrite=overwrite)
    prepared = prepare(
        data,
        models,
        top_k=top_k,
        metric=metric,
        seed=seed,
        pooling=pooling,
        max_length=max_length,
        cache_dir=cache_dir,
        progress=progress,
    )
    result = search(
        prepared,
        output_dir=output_dir,
        storage=storage,
        study_name=study_name,
        budget=budget,
        space=space,
        metric=metric,
        seed=seed,
        multi_objective=multi_objective,
        callbacks=callbacks,
        heartbeat=heartbeat,
    )
    context = study_context(prepared, space or Space(), metric, seed)
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
    )
