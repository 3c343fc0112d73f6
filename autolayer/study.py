"""The Optuna study a run writes into: where it is stored by default, what it is named,
what it stores before its first trial (the context export needs) and what identifies it
(so a resume on other data, models or settings is refused), and which models a stored study
holds. Read and named here; run by :func:`autolayer.search.run_search`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from autolayer import anchor
from autolayer.candidates import Prepared, check_models, folds_run, resolve_models
from autolayer.data import LabelledDataset
from autolayer.errors import ConfigError
from autolayer.files import RECOMMENDATION
from autolayer.options import Options
from autolayer.space import Space


def default_storage(output_dir: str | Path) -> str:
    """The study database of an output folder."""
    return f"sqlite:///{(Path(output_dir) / 'study.db').resolve()}"


def check_own_database(path: Path) -> None:
    """Refuse to add a study's tables to a user's own SQLite file that happens to be named
    like the output folder's study database (autolayer never writes into what it did not
    write)."""
    import sqlite3
    from contextlib import closing

    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError:
        tables = {"not a database"}
    if tables and "studies" not in tables:
        raise ConfigError(
            f"{path} is not a study database (autolayer's or Optuna's): refusing to write "
            "into it; choose another output folder"
        )


def resumed_pool(
    output_dir: str | Path, storage: str | None, study_name: str | None
) -> tuple[str, ...]:
    """:func:`study_pool` of a run's storage, by default the output folder's study
    database, refused first when it is a user's own SQLite file: reading the pool would
    add Optuna's tables to it."""
    if storage is None:
        check_own_database(Path(output_dir) / "study.db")
        storage = default_storage(output_dir)
    return study_pool(storage, study_name)


def study_pool(storage: str, study_name: str | None) -> tuple[str, ...]:
    """The models of the stored study a run will resume (none for a new study, or a name
    left to be derived from the pool): :func:`prepare` keeps a resumed study's pool whole,
    or the anchor alone, whatever the early skip would decide under this budget. Never
    creates a storage; a storage that cannot be opened is an error here, before any work."""
    from autolayer.storage import check_storage_url, make_storage, missing_sqlite_file

    check_storage_url(storage)  # a URL no study can live in: said before any work
    if study_name is None or missing_sqlite_file(storage):
        return ()
    opened = make_storage(storage)
    try:
        attrs = opened.get_study_user_attrs(opened.get_study_id_from_name(study_name))
    except KeyError:
        return ()
    return tuple((attrs.get("context") or {}).get("models") or {})


def study_context(prepared: Prepared, space: Space) -> dict:
    """What export needs besides a trial's parameters, stored as a study attribute before
    the first trial (so an interrupted first run can be exported too)."""
    options = prepared.options
    models = {}
    for cand in prepared.candidates:
        record = prepared.sources[cand.name]
        models[cand.name] = {
            "identity": record.identity,
            "n_hidden_states": cand.n_hidden_states,
            "pooling": options.pooling,
            "max_length": record.max_length,  # what the cache used: the model's limit may cut
        }
    return {
        "models": models,
        "label_names": list(prepared.data.label_names),
        "dataset": {
            "name": prepared.data.name,
            "fingerprint": prepared.data.fingerprint,
            "validation": prepared.validation,
            **({"draw": prepared.data.draw} if prepared.data.draw else {}),
            **({"sample": prepared.data.sample} if prepared.data.sample else {}),
            **({"origin": prepared.data.origin} if prepared.data.origin else {}),
        },
        "head": {"hidden": space.hidden, "dropout": space.dropout, "batch_size": 100},
        "task": options.task,
        "options": options.results(),
        "metric": options.metric,
        "seed": options.seed,
    }


def study_identity(context: dict) -> dict:
    """What makes two runs the same study: trials of another dataset, validation split,
    model pool or feature settings are not comparable, so such a study is refused."""
    validation = context["dataset"]["validation"]
    split = {k: validation[k] for k in ("seed", "n_train", "n_val", "cv_folds") if k in validation}
    options = context.get("options") or {}
    # the option, whichever split validated (a stored study's identity holds the option)
    size = options.get("validation_size", validation.get("size"))
    # the max_length asked for, not the one a model's limit cut it to (the context's):
    # a stored study's identity holds the option
    requested = options.get("max_length")
    return {
        "dataset fingerprint": context["dataset"]["fingerprint"],
        "validation split": {**({"size": size} if size is not None else {}), **split},
        "model pool": {name: info["identity"] for name, info in context["models"].items()},
        "features (pooling, max_length)": sorted(
            {(info["pooling"], requested) for info in context["models"].values()}
        ),
        # which trial the others must beat: the same trials, judged by another rule
        "anchor": options.get("anchor"),
    }


def default_study_name(
    data: LabelledDataset, models: Sequence[str] | None, options: Options
) -> str:
    """Named by the data, the models asked for and, under cross-validation, the folds that
    run (:func:`folds_run`, so the name made from the options as given and from a prepared
    run's is one) and the anchor: a run judged another way is another study, not a refused
    resume. Not by the models a run keeps: the anchor's early skip depends on the budget,
    so a re-run with more trials or a timeout would silently start another study; it
    resumes this one, with its pool (:func:`study_pool`). Known before any extraction."""
    names = check_models(models)
    key = f"{data.fingerprint}|{','.join(names)}"
    if (folds := folds_run(data, options)) is not None:
        key += f"|cv{folds}"
        chosen = anchor.resolve(options.anchor, resolve_models(names, options))
        if chosen is not None:
            key += f"|anchor={chosen}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"autolayer-{data.name}-{digest}"


def recommended_study(output_dir: Path) -> str | None:
    """The study the folder's recommendation came from (a folder may hold several)."""
    from autolayer.config import load_config

    path = output_dir / RECOMMENDATION
    if not path.is_file():
        return None
    try:
        return load_config(path).validation.get("study")
    except ConfigError:
        return None
