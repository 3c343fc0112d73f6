"""How texts become features and how configurations are judged, decided once.

``Options`` is built once (by the CLI from its flags, or by a notebook user) and travels with
the data: the prepared state holds it, the study stores it before its first trial, and
``export`` reads it back from there. So a recommendation can never say ``mean`` pooling for
features that were pooled ``last``, nor report one metric under the name of another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from autolayer.errors import ConfigError
from autolayer.metrics import ALL_METRICS
from autolayer.task import TASKS

if TYPE_CHECKING:
    from autolayer.task import Task

POOLINGS = ("mean", "last", "cls")
ENGINES = ("local", "ray")  # where extraction's chunks are computed (autolayer.engine)
RUNNERS = ("engine", "ray_address", "ray_actors")  # how extraction runs, never what it gives


class Interval(NamedTuple):
    """The values a number given by a user may take, as scikit-learn's ``Interval``
    constraint: integers (``kind`` int) or numbers (float: integers too) from ``low`` to
    ``high`` (None: unbounded), ends included unless ``closed`` says otherwise ("both",
    "left", "right", "neither"). NumPy's numbers count; a bool, though an int, does not.

    The one checker of every number autolayer takes (options, budgets, config fields), so
    that a bound is defined once and worded the same wherever the value enters.
    """

    kind: type
    low: float
    high: float | None = None
    closed: str = "both"
    unit: str = ""  # "seconds": said in the message, "a number of seconds > 0"

    def holds(self, value: object) -> bool:
        kind = Integral if self.kind is int else Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        if self.high is None:
            return above
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        return above and below

    def describe(self) -> str:
        kind = ("an integer" if self.kind is int else "a number") + (
            f" of {self.unit}" if self.unit else ""
        )
        shut = self.closed in ("both", "left")
        if self.high is None:
            return f"{kind} {'>=' if shut else '>'} {self.low}"
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{kind} in {'[' if shut else '('}{self.low}, {self.high}{right}"

    def refusal(self, field: str, value: object) -> str:
        """Why a file's ``field`` cannot hold ``value``; a number YAML read as text (it takes
        ``1e-3`` for a string: the exponent needs a dot) is said to be one."""
        said = f"field {field!r} must be {self.describe()}; got {value!r}"
        try:
            number = float(value) if isinstance(value, str) else None
        except ValueError:
            number = None
        if number is not None:
            said += f" (text to YAML: write {number!r}, a number)"
        return said

    def check(self, name: str, value: object, *, optional: bool = False) -> int | float | None:
        """``value`` as a plain Python int or float (a NumPy scalar would not go into a
        study's JSON attributes; an integer stays one), or a ConfigError naming the
        parameter ``name``, what is allowed and what was given. ``optional``: None passes."""
        if optional and value is None:
            return None
        if not self.holds(value):
            allowed = self.describe() + (", or None" if optional else "")
            raise ConfigError(f"{name} must be {allowed}; got {value!r}", params=(name,))
        return int(value) if isinstance(value, Integral) else float(value)


SEED = Interval(int, 0, 2**32 - 1)  # what NumPy's and scikit-learn's generators take
MAX_LENGTH = Interval(int, 2)  # tokens per text


@dataclass(frozen=True)
class Options:
    """Feature, validation and hardware settings shared by every stage.

    ``pooling`` and ``max_length`` define the features (and the cache key); ``metric``
    (None: the task's default, micro-F1 for multi-label, accuracy otherwise),
    ``seed`` and ``validation_size`` how configurations are compared, or ``cv_folds``
    instead of a carved validation split: k-fold cross-validation over the training rows,
    for few labels, where a carved split would hold one or two texts per class, and then
    ``anchor``, the model whose last layer (linear head) is recommended unless a searched
    configuration beats it clearly (``"auto"``: the pool's largest sentence encoder; see
    :mod:`autolayer.anchor`); ``task`` what a target is (a name of
    :data:`autolayer.task.TASKS`; None: the data's own, single- or multi-label: both are
    named once the options meet the data, by :meth:`for_task`); ``device``,
    ``threads`` and ``cache_dir`` where the work runs and is kept, and
    ``trust_remote_code`` whether a model's own code from the hub may run (they never
    change a result, so a study does not compare them: the features are keyed by the
    weights' identity, and without the permission such a model fails to load rather than
    loading another way). ``engine`` says where extraction's chunks are computed: "local"
    (here) or "ray" (on Ray actors: ``ray_address``, None for ``RAY_ADDRESS`` if set, else
    a local Ray; ``ray_actors``, None for one per ``threads`` CPUs of the cluster, or per
    GPU; both need engine "ray"); like the device, it never changes a result (see
    :mod:`autolayer.engine`).
    """

    pooling: str = "mean"
    max_length: int = 256
    metric: str | None = None
    seed: int = 0
    validation_size: float = 0.2
    cv_folds: int | None = None
    anchor: str | None = None
    task: str | None = None
    device: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None
    trust_remote_code: bool = False
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            _invalid("pooling", f"must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.metric is not None and self.metric not in ALL_METRICS:
            _invalid("metric", f"must be one of {', '.join(ALL_METRICS)}; got {self.metric!r}")
        if self.anchor is not None and (not isinstance(self.anchor, str) or not self.anchor):
            _invalid("anchor", f"must be a model name, 'auto' or 'none'; got {self.anchor!r}")
        if self.task is not None and (not isinstance(self.task, str) or self.task not in TASKS):
            _invalid("task", f"must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.engine not in ENGINES:
            _invalid("engine", f"must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.ray_address is not None and (
            not isinstance(self.ray_address, str) or not self.ray_address
        ):
            _invalid(
                "ray_address",
                f"must be host:port, ray://host:port or auto; got {self.ray_address!r}",
            )
        for name in ("ray_address", "ray_actors"):
            if self.engine != "ray" and getattr(self, name) is not None:
                _invalid(name, "needs engine 'ray'")
        if not isinstance(self.trust_remote_code, bool):
            _invalid("trust_remote_code", f"must be True or False; got {self.trust_remote_code!r}")
        for name, interval in NUMBERS.items():
            value = interval.check(name, getattr(self, name), optional=name in OPTIONAL)
            object.__setattr__(self, name, value)  # a plain number, for the study's JSON

    def for_task(self, task: Task) -> Options:
        """These options for ``task`` (the one the data calls for): its name, and the
        metric given or else the task's default, so studies and configs record names,
        never None (an old single-label study, "accuracy", resumes as it was). A metric
        the task does not score is refused, naming those it does, and so is another
        task than the one these options name."""
        if self.task not in (None, task.name):
            _invalid("task", f"is {self.task!r} here but {task.name!r} for the data")
        metric = self.metric or task.default_metric
        if metric not in task.metrics:
            _invalid(
                "metric",
                f"must be one of the {task.name.replace('_', '-')} metrics "
                f"({', '.join(task.metrics)}); got {metric!r}",
            )
        return replace(self, task=task.name, metric=metric)

    def extraction(self) -> dict:
        """Keyword arguments of :func:`autolayer.extraction.embed_texts`."""
        return {
            "pooling": self.pooling,
            "max_length": self.max_length,
            "device": self.device,
            "threads": self.threads,
            "cache_dir": self.cache_dir,
            "trust_remote_code": self.trust_remote_code,
            "engine": self.engine,
            "ray_address": self.ray_address,
            "ray_actors": self.ray_actors,
        }

    def results(self) -> dict:
        """The settings a result depends on (stored in studies and configs), as JSON."""
        data = asdict(self)
        for key in ("device", "threads", "cache_dir", "trust_remote_code", *RUNNERS):
            data.pop(key)
        return data


# The numbers of Options and what they may be (None too for those in OPTIONAL).
NUMBERS = {
    "max_length": MAX_LENGTH,
    "seed": SEED,
    "validation_size": Interval(float, 0, 1, closed="neither"),
    "cv_folds": Interval(int, 2),
    "threads": Interval(int, 1),
    "ray_actors": Interval(int, 1),
}
OPTIONAL = ("cv_folds", "threads", "ray_actors")


def _invalid(name: str, problem: str) -> None:
    """Refuse the value of option ``name`` (the CLI shows it as its flag)."""
    raise ConfigError(f"{name} {problem}", params=(name,))
