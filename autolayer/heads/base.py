"""What a head is: the trained part of a configuration, reading one ``[N, D_i]`` feature
array per model and giving the task's probabilities ``[N, C]``.

A head is a small class registered by kind (as sources and fusion operators are). The class
says how a trial suggests its hyper-parameters, what a configuration of it costs (for the
budgets, before anything is built) and how to validate its parameters in a config; an
instance is fitted (scikit-learn style: parameters stored untouched, learned state in
attributes ending in ``_``), predicts, and saves its own config (``head.json``) beside its
tensors (``head.safetensors``): no pickle.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autolayer.errors import CacheError, ConfigError, DivergedError
from autolayer.registry import Registry
from autolayer.task import DEFAULT as DEFAULT_TASK
from autolayer.task import TASKS, Task, make_task

if TYPE_CHECKING:
    import optuna
    import torch

WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = "head.json"
OnEpoch = Callable[[int, float], bool]  # (epoch, validation metric) -> stop now


@dataclass(frozen=True)
class HeadFit:
    """Outcome of :meth:`Head.fit`; ``best_epoch`` indexes ``history`` (0-based).

    A head without epochs (fitted to convergence) has one entry in ``history``."""

    best_epoch: int
    best_val_metric: float
    history: tuple[float, ...]
    train_seconds: float
    n_parameters: int


@dataclass(frozen=True)
class Fitting:
    """What :meth:`Head._fit` is given: checked inputs and the settings of one fit."""

    train: Sequence[Any]  # one [N, D_i] array (or sparse matrix) per model
    target: np.ndarray  # the task's target of the train rows
    val: Sequence[Any] | None  # None: the final fit, on every row, as the params say
    val_target: np.ndarray | None
    seed: int = 0
    device: Any = None  # None: CUDA when present, else the CPU
    on_epoch: OnEpoch | None = None  # (epoch, validation metric) -> stop now
    stop_early: bool = True  # False: every epoch runs (cross-validation reads the curve)


class Head(ABC):
    """Features of the chosen models → probabilities of the task's outputs.

    Subclasses set ``kind`` (by :func:`register_head`) and implement the class methods that
    price and suggest a configuration, and ``_fit``, ``_proba``, ``_state`` and
    ``_restore``; the base checks inputs, times the fit, and saves and loads.
    """

    kind: ClassVar[str]
    dense_only: ClassVar[bool] = False  # True: a sparse source (TF-IDF) cannot feed it
    files: ClassVar[tuple[str, ...]] = (WEIGHTS_FILE, CONFIG_FILE)

    def __init__(
        self, params: Mapping[str, Any], *, task: Task | None = None, metric: str | None = None
    ) -> None:
        self.params = dict(params)
        self.task = task if task is not None else make_task()
        self.metric = self.task.default_metric if metric is None else metric

    def clone(self) -> Head:
        """An unfitted copy with the same constructor arguments (as ``sklearn.clone``):
        what cross-validation trains once per fold. A subclass whose constructor takes
        more than ``params``, ``task`` and ``metric`` overrides this to pass them too."""
        return type(self)(self.params, task=self.task, metric=self.metric)

    # ------------------------------------------------------------------ the class's side

    @classmethod
    @abstractmethod
    def suggest(cls, trial: optuna.Trial, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        """This head's full parameters for one trial, its choices asked of ``trial``
        (``trial.suggest_*``, with names stable across versions: studies are resumed), from
        the search space (:class:`autolayer.space.Space`) and the chosen candidates
        (:class:`autolayer.space.Candidate`; ``space`` imports heads, not the reverse)."""

    @classmethod
    @abstractmethod
    def guided(cls, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        """The Optuna parameters (as :meth:`suggest` names them) of this head in a guided
        first trial of ``chosen``: a cheap, sensible setting, also what the search prices
        to tell whether any configuration fits a budget (:func:`guided_params`): a value
        for every choice :meth:`suggest` asks (empty for a head without choices)."""

    @classmethod
    def takes(cls, chosen: Sequence[Any]) -> bool:
        """Whether this head can read the features of ``chosen`` (the candidates of one
        trial, :class:`autolayer.space.Candidate`): by default any, but a sparse one (TF-IDF)
        when ``dense_only``. A head of several members (late fusion) wants two or more."""
        return not (cls.dense_only and any(c.sparse for c in chosen))

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str = "head") -> dict[str, Any]:
        """``params`` validated (a ConfigError naming ``where`` and the field) and completed
        with defaults; what a config's ``head.params`` must pass."""
        return dict(params)

    @classmethod
    @abstractmethod
    def n_parameters(
        cls, input_dims: Sequence[int], n_outputs: int, params: Mapping[str, Any]
    ) -> int:
        """Learned scalars of this head on inputs of these widths, without building it."""

    @classmethod
    def fused_dim(cls, input_dims: Sequence[int], params: Mapping[str, Any]) -> int:
        """Width of the vector the classifier reads (all the inputs', by default)."""
        return int(sum(input_dims))

    @classmethod
    def n_configurations(cls, space: Any) -> int | None:
        """How many parameter settings a trial of one model subset and layers can take
        (None: infinitely many, e.g. a learning rate). A head with finitely many is not
        trained twice on the same settings (see :mod:`autolayer.search`)."""
        return None

    @classmethod
    def final_params(cls, params: Mapping[str, Any], fit: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters of the final head trained on every row, from a trial's parameters and
        its recorded fit (``best_epoch``...): by default the trial's own."""
        return dict(params)

    @classmethod
    def describe(cls, params: Mapping[str, Any], n_models: int) -> str:
        """A few words for tables: what this head does with these parameters."""
        return f"{cls.kind} head"

    # ------------------------------------------------------------------ a fitted head

    def fit(
        self,
        train: Sequence[Any],
        target: np.ndarray,
        val: Sequence[Any] | None = None,
        val_target: np.ndarray | None = None,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        on_epoch: OnEpoch | None = None,
        n_outputs: int | None = None,
        stop_early: bool = True,
    ) -> HeadFit:
        """Fit on ``train`` (one ``[N, D_i]`` array or sparse matrix per model), judged on
        ``val`` by ``self.metric`` after each epoch (None: the final fit, on every row, for
        the parameters' number of epochs, or stopped on rows it holds out itself: the MLP's
        ``validation_fraction``). ``on_epoch`` may stop training (Optuna pruning);
        ``stop_early=False`` runs every epoch (cross-validation reads the whole curve)."""
        import time

        dims = input_dims(train)
        self._check_dense(train, "train")
        target = self.task.target(target, np.shape(train[0])[0], "y_train")
        if val is not None:
            check_inputs(dims, val, "val")
            self._check_dense(val, "val")
            val_target = self.task.target(val_target, np.shape(val[0])[0], "y_val")
        targets = [target] if val is None else [target, val_target]
        self.input_dims_ = dims
        self.sparse_ = [is_sparse(x) for x in train]
        self.n_outputs_ = n_outputs or self.task.n_outputs(*targets)
        start = time.perf_counter()
        fit = self._fit(Fitting(train, target, val, val_target, seed, device, on_epoch, stop_early))
        broken = self._non_finite()
        if broken:
            raise DivergedError(
                f"the {self.kind} head diverged ({broken} is not finite after training)"
                + self._diverged_hint()
            )
        self.fit_ = HeadFit(
            fit.best_epoch,
            fit.best_val_metric,
            fit.history,
            time.perf_counter() - start,
            fit.n_parameters,
        )
        return self.fit_

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """Probabilities ``[N, C]`` (float32) for one ``[N, D_i]`` input per model, sparse
        where the head was fitted on sparse features."""
        self._check_fitted()
        check_inputs(self.input_dims_, inputs, "inputs")
        self._check_dense(inputs, "inputs")
        given = [is_sparse(x) for x in inputs]
        if given != self.sparse_:
            raise ConfigError(
                f"inputs must be sparse where the head was trained on sparse features: "
                f"expected {self.sparse_}, got {given}"
            )
        proba = np.asarray(self._proba(inputs), dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        if len(bad):
            raise self._non_finite_output(inputs, bad, len(proba))
        return proba

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``head.safetensors`` (tensors) and ``head.json`` (kind, parameters, input
        widths, outputs, task and its parameters, e.g. fitted thresholds), each atomically."""
        from safetensors.torch import save_file

        from autolayer.files import atomic_write

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self._state().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(state, path))
        record = {
            "kind": self.kind,
            "params": self.params,
            "input_dims": list(self.input_dims_),
            "sparse": list(self.sparse_),
            "n_outputs": self.n_outputs_,
            "task": self.task.name,
            "metric": self.metric,
        }
        if self.task.params():  # single-label has none: its file is as before they existed
            record["task_params"] = self.task.params()
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda path: Path(path).write_text(text))

    def _check_fitted(self) -> None:
        """scikit-learn's NotFittedError before a fitted head's state is read."""
        from sklearn.exceptions import NotFittedError

        if not hasattr(self, "input_dims_"):
            raise NotFittedError(
                f"this {self.kind} head is not fitted yet: call fit, or load a saved one "
                "with load_head"
            )

    def _check_dense(self, inputs: Sequence[Any], name: str) -> None:
        """Refuse a sparse input (a TF-IDF source's) to a ``dense_only`` head."""
        sparse = [i for i, x in enumerate(inputs) if is_sparse(x)]
        if self.dense_only and sparse:
            raise ConfigError(
                f"the {self.kind} head takes dense features only; {name}[{sparse[0]}] is sparse"
            )

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _fit(self, fitting: Fitting) -> HeadFit:
        """Learn from checked inputs (``input_dims_``, ``sparse_`` and ``n_outputs_`` are
        set); ``train_seconds`` of the result is ignored (the base times the call)."""

    @abstractmethod
    def _proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """Probabilities ``[N, C]`` of checked inputs (the head on the CPU, eval mode)."""

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]:
        """The learned tensors, by name (what ``head.safetensors`` holds)."""

    @abstractmethod
    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the learned state from ``_state()``'s tensors (``input_dims_``,
        ``sparse_`` and ``n_outputs_`` are set); raise ValueError or RuntimeError when they
        do not fit."""

    def _diverged_hint(self) -> str:
        """What to change when training diverged (a learning rate, for a gradient head)."""
        return ""

    def _non_finite(self) -> str | None:
        """The name of the first learned tensor holding nan or inf (None: all finite)."""
        import torch

        return next((k for k, v in self._state().items() if not torch.isfinite(v).all()), None)

    def _non_finite_output(
        self, inputs: Sequence[Any], bad: np.ndarray, n_rows: int
    ) -> CacheError | DivergedError:
        """Why the output is not finite for rows ``bad``: damaged features or weights (a
        cache entry, a saved head: exit 4), or else a head whose finite weights overflow on
        finite features, which only training again cures (as a diverged head)."""
        where = f"for {len(bad)} of {n_rows} rows (first: row {bad[0]})"
        parts = (x[bad] for x in inputs)
        if not all(np.isfinite(p.data if is_sparse(p) else p).all() for p in parts):
            return CacheError(
                f"these texts' features are not finite {where}: the embeddings are damaged: "
                "clear their cache entry and extract again"
            )
        broken = self._non_finite()
        if broken:
            return CacheError(
                f"the head's weights are damaged: {broken} is not finite (nan or inf)"
            )
        return DivergedError(
            f"the head's output is not finite {where}, though its weights and these features "
            "are: it overflows; train it again" + self._diverged_hint()
        )


class Untuned:
    """A head with nothing to tune (linear, late fusion): no parameters, so one
    configuration per model subset and layers, never trained twice on the same ones.
    Listed before the head's base class: ``class LinearHead(Untuned, NetHead)``."""

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str = "head") -> dict[str, Any]:
        if params:
            unknown = ", ".join(map(repr, sorted(str(k) for k in params)))
            raise ConfigError(
                f"{where}: unknown field(s) {unknown}; the {cls.kind} head takes none"
            )
        return {}

    @classmethod
    def suggest(cls, trial: optuna.Trial, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def guided(cls, space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def n_configurations(cls, space: Any) -> int | None:
        return 1


HEADS = Registry("head", "kind")
register_head = HEADS.register  # class decorator: @register_head("kind")


def head_class(kind: str) -> type[Head]:
    """The head registered as ``kind``."""
    return HEADS.find(kind)


def guided_params(cls: type[Head], space: Any, chosen: Sequence[Any]) -> dict[str, Any]:
    """The full parameters of head ``cls`` at its guided setting (:meth:`Head.guided` fed
    to :meth:`Head.suggest`); a ConfigError naming the head and the choice when ``guided``
    leaves out one that ``suggest`` asks, which would otherwise fail every search."""
    import optuna

    try:
        return cls.suggest(optuna.trial.FixedTrial(cls.guided(space, chosen)), space, chosen)
    except ValueError as error:
        missing = re.search(r"parameter '(.+)' is not found", str(error))
        if missing is None:
            raise
        raise ConfigError(
            f"the {cls.kind} head's guided setting has no value for {missing[1]!r}, which "
            "its suggest asks: Head.guided must give every choice of a trial"
        ) from None


def make_head(
    kind: str,
    params: Mapping[str, Any],
    *,
    task: Task | None = None,
    metric: str | None = None,
) -> Head:
    """An unfitted head of ``kind``, its parameters checked (:meth:`Head.check_params`)
    and ``metric`` one of the task's (None: the task's default metric)."""
    cls = head_class(kind)
    task = task if task is not None else make_task()
    metric = task.default_metric if metric is None else metric
    if metric not in task.metrics:
        raise ConfigError(f"metric must be one of {list(task.metrics)}, got {metric!r}")
    return cls(cls.check_params(params), task=task, metric=metric)


def load_head(directory: str | os.PathLike) -> Head:
    """Rebuild a saved head from ``head.json`` and ``head.safetensors``.

    A missing file is a wrong folder (ConfigError); files that do not parse, disagree or
    hold non-finite weights were damaged after autolayer wrote them (CacheError, exit 4).
    The task is rebuilt with its recorded parameters (a multi-label head's thresholds; none
    before they were recorded). ``head.json`` of schema 1 (flat MLP fields and ``head``: its
    kind) is read too."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"directory {str(directory)!r} has no {name}")
    config = directory / CONFIG_FILE
    record = _read_record(config)
    try:
        head = make_head(
            record["kind"],
            record["params"],
            task=make_task(record.get("task"), record.get("task_params")),
            metric=record.get("metric"),
        )
        head.input_dims_ = [int(d) for d in record["input_dims"]]
        head.sparse_ = [bool(s) for s in record["sparse"]]
        head.n_outputs_ = int(record["n_outputs"])
        if len(head.sparse_) != len(head.input_dims_) or not head.input_dims_:
            raise ValueError("input_dims and sparse differ in length")
        if head.dense_only and any(head.sparse_):
            raise ValueError(f"the {head.kind} head takes dense features only; sparse is true")
    except KeyError as error:
        raise CacheError(f"{config} is not a valid head config: missing field {error}") from None
    except (TypeError, ValueError, ConfigError) as error:
        raise CacheError(f"{config} is not a valid head config: {error}") from None
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CacheError(f"{weights} is corrupt: {first}") from None
    try:
        head._restore(state)
    except (RuntimeError, ValueError, KeyError) as error:
        message = " ".join(str(error).split())
        raise CacheError(f"{weights} does not match head.json: {message}") from None
    broken = head._non_finite()
    if broken:
        raise CacheError(
            f"{weights} is damaged: {broken} is not finite (nan or inf); "
            "re-run apply to save the head again"
        )
    return head


def _current(record: object) -> dict:
    """A ``head.json`` record in today's form: schema 1 wrote the MLP's constructor
    arguments flat, its kind as ``head`` and its outputs as ``n_classes``; the linear
    head wrote them too, unused, and takes none."""
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    if "kind" in record:
        return record
    kind = record.get("head", "mlp")
    shape = ("operator", "width", "hidden", "dropout") if kind == "mlp" else ()
    return {
        "kind": kind,
        "params": {k: record[k] for k in shape if k in record},
        "input_dims": record["input_dims"],
        "sparse": record.get("sparse") or [False] * len(record["input_dims"]),
        "n_outputs": record["n_classes"],
    }


def _read_record(config: Path) -> dict:
    """``head.json`` parsed, in today's form (:func:`_current`), its head kind and task
    registered. A file that does not parse is damaged (CacheError); a kind or task that is
    not registered here is a plug-in whose module was not imported (ConfigError, exit 2)."""
    try:
        record = _current(json.loads(config.read_text()))
        task = record.get("task")
        names = {"head": record["kind"], "task": DEFAULT_TASK if task is None else task}
        if not all(isinstance(name, str) for name in names.values()):
            raise TypeError(f"head kind and task must be strings, got {names}")
    except KeyError as error:
        raise CacheError(f"{config} is not a valid head config: missing field {error}") from None
    except (TypeError, ValueError) as error:  # ValueError: JSON, UTF-8
        raise CacheError(f"{config} is not a valid head config: {error}") from None
    for (what, name), registry in zip(names.items(), (HEADS, TASKS), strict=True):
        if name not in registry:
            raise ConfigError(
                f"{config} names {what} {name!r}, which is not registered in this "
                "process: import the module that registers it"
            )
    return record


# ---------------------------------------------------------------------- input checks


def is_sparse(array: Any) -> bool:
    """Whether ``array`` is a scipy sparse matrix (a TF-IDF source's features)."""
    from scipy.sparse import issparse

    return issparse(array)


def input_dims(train: Sequence[Any]) -> list[int]:
    """``D_i`` of each training array, after checking they are 2-D with one non-zero N."""
    shapes = [tuple(np.shape(array)) for array in train]
    if not shapes or any(len(shape) != 2 for shape in shapes):
        raise ConfigError(
            f"train must be a non-empty list of 2-D arrays [N, D_i], got shapes {shapes}"
        )
    dims = [shape[1] for shape in shapes]
    check_inputs(dims, train, "train")
    return dims


def check_inputs(dims: Sequence[int], inputs: Sequence[Any], name: str) -> None:
    """One ``[N, D_i]`` array per model, same N, ``D_i`` as expected."""
    shapes = [tuple(np.shape(array)) for array in inputs]
    n_rows = {shape[0] for shape in shapes if len(shape) == 2}
    expected = [(dim,) for dim in dims]
    if [shape[1:] for shape in shapes] != expected or len(n_rows) != 1 or 0 in n_rows:
        raise ConfigError(
            f"{name} must be {len(dims)} non-empty arrays [N, D_i] with D = "
            f"{list(dims)} and one N, got shapes {shapes}"
        )


# ---------------------------------------------------------------------- cross-validation


@dataclass(frozen=True)
class CrossValidation:
    """Outcome of :func:`cross_validate`: the held-out score, and the epochs to train for."""

    best_epoch: int  # argmax of ``curve``: how long the final head trains on every row
    best_val_metric: float  # each fold scored at the epoch the other folds chose
    curve: tuple[float, ...]  # mean over folds of the held-out metric after each epoch
    train_seconds: float
    fold_scores: tuple[float, ...] = ()  # each fold's score (their mean is best_val_metric)


def cross_validate(
    head: Head,
    train: Sequence[Any],
    target: np.ndarray,
    folds: Sequence[np.ndarray],
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    n_outputs: int | None = None,
) -> CrossValidation:
    """Judge a head (its parameters; it is not fitted) by k-fold cross-validation over
    ``train`` (few labels, no split to spare): one copy per fold, each trained every epoch
    with its fold held out. The number of epochs is a hyper-parameter, chosen for fold i on
    the mean curve of the *other* folds, and fold i is scored there: taking the best epoch
    of the mean curve of all folds would score every fold at a maximum over 60 noisy
    epochs, which on a few dozen rows flatters an epoch-trained head over one without
    epochs (the linear head)."""
    target = np.asarray(target)
    n_outputs = n_outputs or head.task.n_outputs(target)
    every = np.arange(len(target))
    curves, seconds = [], 0.0
    for held in folds:
        keep = np.setdiff1d(every, held)
        fit = head.clone().fit(
            [x[keep] for x in train],
            target[keep],
            [x[held] for x in train],
            target[held],
            seed=seed,
            device=device,
            n_outputs=n_outputs,
            stop_early=False,
        )
        curves.append(fit.history)
        seconds += fit.train_seconds
    runs = np.asarray(curves, dtype=np.float64)  # [folds, epochs]
    total = runs.sum(axis=0)
    others = (total - runs) / max(len(runs) - 1, 1)  # each fold's view of the rest
    scores = runs[np.arange(len(runs)), np.argmax(others, axis=1)]
    curve = total / len(runs)
    return CrossValidation(
        int(np.argmax(curve)),
        float(scores.mean()),
        tuple(curve.tolist()),
        seconds,
        tuple(scores.tolist()),
    )
