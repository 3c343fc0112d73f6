"""The exported configuration: which models, layers and fusion head, and where it came from.

A config is a small YAML file anyone can read and edit. It carries a schema version, each
model with the identity hash of its weights, the head (its kind and parameters), the task,
the dataset's fingerprint, seeds and library versions, so a result can be reproduced and a
config applied to the wrong data or weights is noticed. Loading validates every field and
reports the first problem in one line; files of schema 1 (flat head fields) still load.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import yaml

from autolayer.errors import ConfigError
from autolayer.files import atomic_write_bytes
from autolayer.options import MAX_LENGTH, POOLINGS, SEED, Interval
from autolayer.task import DEFAULT as DEFAULT_TASK
from autolayer.task import make_task

if TYPE_CHECKING:  # the heads load torch: not needed to read a config's names
    from autolayer.heads import Head
    from autolayer.task import Task

SCHEMA_VERSION = 2
SCHEMAS = (1, 2)  # the versions read: schema 1 held the head's fields flat


# Schema 1 held the MLP head's fields flat beside the models, and its kind as ``head``; its
# linear head (logistic regression) had no width or learning rate: written as 0.
SCHEMA1_HEAD = ("operator", "width", "hidden", "dropout", "lr", "batch_size", "epochs")
LINEAR_BOUNDS = {"width": Interval(int, 0, 65_536), "lr": Interval(float, 0, 1)}


@dataclass(frozen=True)
class ModelChoice:
    """One backbone of the configuration, cut at ``layer`` (a hidden-state index)."""

    spec: str
    identity: str
    layer: int
    n_hidden_states: int
    pooling: str = "mean"
    max_length: int = 256


@dataclass(frozen=True)
class HeadChoice:
    """The trained part of a configuration: a registered head ``kind`` and its parameters
    (as the head class checks and completes them; see :mod:`autolayer.heads`)."""

    kind: str
    params: dict


@dataclass(frozen=True)
class FusionConfig:
    """Everything needed to rebuild, retrain and judge a recommended classifier."""

    models: tuple[ModelChoice, ...]
    head: HeadChoice
    label_names: tuple[str, ...]
    task: str = DEFAULT_TASK
    task_params: dict = field(default_factory=dict)  # its fitted decision rule (thresholds)
    dataset: dict = field(default_factory=dict)
    metric: str = "accuracy"
    seed: int = 0
    validation: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = asdict(self)
        data["models"] = [asdict(m) for m in self.models]
        data["label_names"] = list(self.label_names)
        if not self.task_params:  # a task that tunes nothing: written as before this field
            del data["task_params"]
        return {"schema_version": data.pop("schema_version"), **data}

    def make_task(self) -> Task:
        """This config's task, deciding by its fitted rule (``task_params``)."""
        return make_task(self.task, self.task_params)

    def make_head(self) -> Head:
        """An unfitted head of this config's kind and parameters, for its task (with its
        fitted rule) and metric (the parameters fix its training: the MLP's ``epochs`` as
        given, or at most those, stopped early on its ``validation_fraction`` of the rows)."""
        from autolayer.heads import make_head

        return make_head(
            self.head.kind, self.head.params, task=self.make_task(), metric=self.metric
        )

    def save(self, path: str | Path) -> Path:
        """Write YAML atomically (a crash never leaves half a config)."""
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        atomic_write_bytes(path, text.encode())
        return path


def library_versions() -> dict:
    """Versions that can change results, recorded in every exported config."""
    out = {"python": platform.python_version()}
    for name in ("autolayer", "torch", "transformers", "optuna", "scikit-learn", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_config(path: str | Path) -> FusionConfig:
    """Read and validate a config file; every problem is a one-line ``ConfigError``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(_folder_given(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    return from_dict(data, str(path))


def _folder_given(path: Path) -> str:
    """The config a folder holds, named: ``recommend`` and ``apply`` write folders, so
    passing one where a config file belongs is an easy slip."""
    inside = [path / name for name in ("recommendation.yaml", "config.yaml")]
    found = [str(p) for p in inside if p.is_file()]
    hint = f"; did you mean {found[0]!r}?" if found else ", not a config file"
    return f"config {str(path)!r} is a folder{hint}"


def from_dict(data: object, where: str = "config") -> FusionConfig:
    """Validate a parsed config mapping (schema 2, or schema 1 with its flat head fields)
    and build the dataclass."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    version = data.get("schema_version")
    if version not in SCHEMAS:
        raise ConfigError(
            f"{where}: unsupported schema_version {version!r}; "
            f"this autolayer reads {' and '.join(map(str, SCHEMAS))}"
        )
    known = _field_names(FusionConfig)
    if version == 1:
        known = (known - {"task", "task_params"}) | set(SCHEMA1_HEAD)
    _no_unknown_keys(data, known, where, _schema1_hint if version == 2 else "")
    models = _require(data, "models", list, where)
    if not models:
        raise ConfigError(f"{where}: models must list at least one model")
    choices = tuple(_model_choice(m, f"{where}: models[{i}]") for i, m in enumerate(models))
    head = _schema1_head(data, where) if version == 1 else _head_choice(data, where)
    labels = _require(data, "label_names", list, where)
    if len(labels) < 2:
        raise ConfigError(f"{where}: label_names must list at least 2 classes")
    task = _require(data, "task", str, where) if "task" in data else DEFAULT_TASK
    config = FusionConfig(
        models=choices,
        head=_checked_head(head, choices, where),
        label_names=tuple(str(x) for x in labels),
        task=task,
        task_params=_require(data, "task_params", dict, where) if "task_params" in data else {},
        dataset=dict(data.get("dataset") or {}),
        metric=str(data["metric"]) if "metric" in data else _task(task, where).default_metric,
        seed=_bounded(data, "seed", SEED, where, default=0),
        validation=dict(data.get("validation") or {}),
        cost=dict(data.get("cost") or {}),
        versions=dict(data.get("versions") or {}),
    )
    _check_task(config, where)
    _check_draw(config.dataset.get("draw"), where)
    _check_draw(config.dataset.get("sample"), where, "sample", "max_train_samples")
    _check_origin(config.dataset.get("origin"), where)
    return config


def _no_unknown_keys(
    data: dict, known: Collection[str], where: str, hint: Callable[[list[str]], str] | str = ""
) -> None:
    """A misspelt or foreign key would otherwise be ignored silently; ``hint`` may add a
    word on the unknown keys."""
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        extra = hint(unknown) if callable(hint) else hint
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}{extra}"
        )


def _schema1_hint(unknown: list[str]) -> str:
    """Schema 1 kept the head's fields at the top level; schema 2 under ``head.params``."""
    moved = [k for k in unknown if k in SCHEMA1_HEAD]
    return f" (schema 2 keeps {', '.join(moved)} under head.params)" if moved else ""


def _field_names(kind: type) -> set[str]:
    """The fields of a config dataclass: the keys its mapping may hold."""
    return {f.name for f in fields(kind)}


def _head_choice(data: dict, where: str) -> HeadChoice:
    """Schema 2's ``head: {kind, params}``, its shape checked (the params by the head)."""
    head = _require(data, "head", dict, where)
    inside = f"{where}: head"
    _no_unknown_keys(head, _field_names(HeadChoice), inside)
    params = _require(head, "params", dict, inside) if "params" in head else {}
    return HeadChoice(_require(head, "kind", str, inside), params)


def _schema1_head(data: dict, where: str) -> HeadChoice:
    """Schema 1's flat head fields, every one required and bounded as that version did, as
    a HeadChoice: ``head`` named the kind (mlp when absent); the linear head used none."""
    from autolayer.fusion import OPERATORS
    from autolayer.heads.mlp import BOUNDS

    operator = _require(data, "operator", str, where)
    if operator not in OPERATORS:
        raise ConfigError(
            f"{where}: operator must be one of {', '.join(OPERATORS)}; got {operator!r}"
        )
    kind = str(data.get("head", "mlp"))
    bounds = {key: BOUNDS[key] for key in SCHEMA1_HEAD[1:]}
    bounds.update(LINEAR_BOUNDS if kind == "linear" else {})
    flat = {key: _bounded(data, key, interval, where) for key, interval in bounds.items()}
    return HeadChoice(kind, {} if kind == "linear" else {"operator": operator, **flat})


def _checked_head(head: HeadChoice, models: tuple[ModelChoice, ...], where: str) -> HeadChoice:
    """``head`` with its params checked and completed by its class, and refused over
    models it cannot read (:meth:`autolayer.heads.Head.takes`: a dense-only head over a
    sparse source, TF-IDF; late fusion over one model), told by each model's source class
    without loading it."""
    from autolayer.heads import head_class
    from autolayer.sources.base import source_class

    try:
        cls = head_class(head.kind)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    params = cls.check_params(head.params, f"{where}: head.params")
    sparse = [m.spec for m in models if source_class(m.spec).sparse]
    if cls.dense_only and sparse:
        raise ConfigError(
            f"{where}: the {head.kind} head takes dense features; {sparse[0]} is sparse"
        )
    if not cls.takes([SimpleNamespace(sparse=m.spec in sparse) for m in models]):
        specs = ", ".join(m.spec for m in models)
        raise ConfigError(
            f"{where}: the {head.kind} head does not read "
            f"{'one model' if len(models) == 1 else f'these {len(models)} models'} ({specs}); "
            f"it is {cls.describe(params, len(models))}"
        )
    return HeadChoice(head.kind, params)


def _task(
    name: str, where: str, params: dict | None = None, labels: Sequence[str] | None = None
) -> Task:
    """The registered task ``name`` with ``params`` (a bad per-label one named by its label
    in ``labels``); refused naming the file."""
    try:
        return make_task(name, params, labels)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_task(config: FusionConfig, where: str) -> None:
    """The task is registered and takes its ``task_params``, which fit the config's labels
    (a threshold per label), and the metric is one of its metrics: a rule edited out of
    step with ``label_names`` is refused when the file is read, not at the first
    prediction."""
    task = _task(config.task, where, config.task_params, config.label_names)
    try:
        task.decide(np.full((1, len(config.label_names)), 0.5))
    except ConfigError as exc:
        raise ConfigError(f"{where}: task_params: {exc}") from None
    if config.metric not in task.metrics:
        raise ConfigError(
            f"{where}: metric must be one of {list(task.metrics)}, got {config.metric!r}"
        )


def _require(data: dict, key: str, kind, where: str):
    if key not in data:
        raise ConfigError(f"{where}: missing required field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = (kind,) if isinstance(kind, type) else kind
        names = " or ".join(_KIND_WORDS.get(k, k.__name__) for k in kinds)
        raise ConfigError(f"{where}: field {key!r} must be {names}; got {value!r}")
    return value


# What a YAML reader calls the Python types a field must have.
_KIND_WORDS = {dict: "a mapping", list: "a list", str: "text", int: "an integer"}


def _positive(data: dict, key: str, where: str) -> int:
    value = _require(data, key, int, where)
    if value < 1:
        raise ConfigError(f"{where}: field {key!r} must be >= 1; got {value}")
    return value


_REQUIRED = object()


def _bounded(
    data: dict, key: str, interval: Interval, where: str, default: object = _REQUIRED
) -> int | float:
    """``data[key]`` (or ``default`` when absent), checked against ``interval``."""
    if key not in data and default is _REQUIRED:
        raise ConfigError(f"{where}: missing required field {key!r}")
    value = data.get(key, default)
    if not interval.holds(value):
        raise ConfigError(f"{where}: {interval.refusal(key, value)}")
    return interval.kind(value)


def _model_choice(data: object, where: str) -> ModelChoice:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with spec, identity, layer")
    _no_unknown_keys(data, _field_names(ModelChoice), where)
    choice = ModelChoice(
        spec=_require(data, "spec", str, where),
        identity=_require(data, "identity", str, where),
        layer=_require(data, "layer", int, where),
        n_hidden_states=_positive(data, "n_hidden_states", where),
        pooling=str(data.get("pooling", "mean")),
        max_length=_bounded(data, "max_length", MAX_LENGTH, where, default=256),
    )
    if not 0 <= choice.layer < choice.n_hidden_states:
        raise ConfigError(f"{where}: layer {choice.layer} outside 0..{choice.n_hidden_states - 1}")
    if choice.pooling not in POOLINGS:
        raise ConfigError(f"{where}: pooling must be one of {', '.join(POOLINGS)}")
    return choice


def _check_origin(origin: object, where: str) -> None:
    """Where the data was read (``apply``'s default data): three strings, or absent."""
    keys = ("source", "text_column", "label_column")
    if origin is not None and (
        not isinstance(origin, dict) or not all(isinstance(origin.get(k), str) for k in keys)
    ):
        raise ConfigError(
            f"{where}: dataset.origin must map source, text_column and label_column to "
            f"text; got {origin!r}"
        )


def _check_draw(
    draw: object, where: str, key: str = "draw", count: str = "labels_per_class"
) -> None:
    """A draw that ``apply`` can repeat (few labels: ``draw``, labels per class; a capped
    train split: ``sample``, max_train_samples): its size, seed and source data."""
    if draw is None:
        return
    kinds = {count: int, "seed": int, "source_fingerprint": str}
    if not isinstance(draw, dict) or any(
        not isinstance(draw.get(k), kind) or isinstance(draw.get(k), bool)
        for k, kind in kinds.items()
    ):
        raise ConfigError(
            f"{where}: dataset.{key} must map {count} and seed (integers) and "
            f"source_fingerprint (text); got {draw!r}"
        )
