"""How texts become features and how configurations are judged, decided once.

``Options`` is built once (by the CLI from its flags, or by a notebook user) and travels with
the data: the prepared state holds it, the study stores it before its first trial, and
``export`` reads it back from there. So a recommendation can never say ``mean`` pooling for
features that were pooled ``last``, nor report one metric under the name of another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from autolayer.errors import ConfigError
from autolayer.metrics import METRICS

POOLINGS = ("mean", "last", "cls")


@dataclass(frozen=True)
class Options:
    """Feature, validation and hardware settings shared by every stage.

    ``pooling`` and ``max_length`` define the features (and the cache key); ``metric``,
    ``seed`` and ``validation_size`` how configurations are compared, or ``cv_folds``
    instead of a carved validation split: k-fold cross-validation over the training rows,
    for few labels, where a carved split would hold one or two texts per class, and then
    ``anchor``, the model whose last layer (linear head) is recommended unless a searched
    configuration beats it clearly (``"auto"``: the pool's largest sentence encoder; see
    :mod:`autolayer.anchor`); ``device``,
    ``threads`` and ``cache_dir`` where the work runs and is kept (they never change a
    result, so a study does not compare them).
    """

    pooling: str = "mean"
    max_length: int = 256
    metric: str = "accuracy"
    seed: int = 0
    validation_size: float = 0.2
    cv_folds: int | None = None
    anchor: str | None = None
    device: str | None = None
    threads: int | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            _invalid("pooling", f"must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.metric not in METRICS:
            _invalid("metric", f"must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            _invalid("max_length", f"must be an integer; got {self.max_length!r}")
        if self.max_length < 2:
            _invalid("max_length", f"must be >= 2; got {self.max_length}")
        if not _integer_at_least(self.seed, 0):  # numpy's generators take no negative seed
            _invalid("seed", f"must be an integer >= 0; got {self.seed!r}")
        if not 0.0 < self.validation_size < 1.0:
            _invalid(
                "validation_size", f"must be a fraction in (0, 1); got {self.validation_size!r}"
            )
        if self.cv_folds is not None and not _integer_at_least(self.cv_folds, 2):
            _invalid("cv_folds", f"must be an integer >= 2; got {self.cv_folds!r}")
        if self.anchor is not None and (not isinstance(self.anchor, str) or not self.anchor):
            _invalid("anchor", f"must be a model name, 'auto' or 'none'; got {self.anchor!r}")
        if self.threads is not None and not _integer_at_least(self.threads, 1):
            _invalid("threads", f"must be an integer >= 1; got {self.threads!r}")

    def extraction(self) -> dict:
        """Keyword arguments of :func:`autolayer.extraction.embed_texts`."""
        return {
            "pooling": self.pooling,
            "max_length": self.max_length,
            "device": self.device,
            "threads": self.threads,
            "cache_dir": self.cache_dir,
        }

    def results(self) -> dict:
        """The settings a result depends on (stored in studies and configs), as JSON."""
        data = asdict(self)
        for key in ("device", "threads", "cache_dir"):
            data.pop(key)
        return data


def _integer_at_least(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _invalid(name: str, problem: str) -> None:
    """Refuse the value of option ``name`` (the CLI shows it as its flag)."""
    raise ConfigError(f"{name} {problem}", params=(name,))
