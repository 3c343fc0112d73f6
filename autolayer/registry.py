"""Name → class registries, filled by a class decorator (like Optuna's samplers).

Fusion operators, feature sources, heads and tasks are each one registry: a plug-in is one
class in the user's own module, registered before the search runs, and found by the name a
config or a command line gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from autolayer.errors import ConfigError

_C = TypeVar("_C", bound=type)


class Registry(dict[str, type]):
    """Classes by name; ``what`` names the family in messages, ``attribute`` is the class
    attribute that receives the name (``name``, or ``kind``)."""

    def __init__(self, what: str, attribute: str = "name") -> None:
        super().__init__()
        self.what = what
        self.attribute = attribute

    def register(self, name: str) -> Callable[[_C], _C]:
        """Class decorator adding a class under ``name`` (a name is registered once)."""

        def decorator(cls: _C) -> _C:
            if name in self:
                raise ConfigError(f"{self.what} {name!r} is already registered by {self[name]}")
            setattr(cls, self.attribute, name)
            self[name] = cls
            return cls

        return decorator

    def find(self, name: str, params: Sequence[str] = ()) -> type:
        """The class registered as ``name``; else a ConfigError naming the choices (and
        the option ``params`` that gave it, for the CLI)."""
        if name not in self:
            raise ConfigError(
                f"{self.what} must be one of {', '.join(self)}; got {name!r}", params=params
            )
        return self[name]
