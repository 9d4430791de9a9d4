"""Name -> function registries: the one way Metis picks a *function* by name from a config.

Two ways to name a part in a Hydra config, never both for one kind of part:
- a function picked by name (reward schemes, policy losses, verifiers, benchmark loaders,
  synthetic task families, scoring metrics) lives in a :class:`Registry` and is added with
  ``@REGISTRY.register("name")``; the config holds the name (``reward: {name: hdpo}``, ``loader: mcq``);
- an object built with arguments (tools, search providers, rollout engines, the tool box, data
  modules, the LightningModule) is a class named by ``_target_`` in its YAML.
See docs/extending.md.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (functions or classes) of one kind.

    ``prepare(name, obj)``, when given, turns what is registered into what is stored (the reward
    schemes store a :class:`metis.rl.params.TypedFunction` that checks its parameters); the
    decorator still returns the object unchanged.

    >>> LOSSES = Registry("policy loss")
    >>> @LOSSES.register("ppo")
    ... def ppo(): ...
    """

    def __init__(self, kind: str, prepare: Callable[[str, Any], T] | None = None) -> None:
        self.kind = kind
        self._prepare = prepare
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = self._prepare(name, obj) if self._prepare is not None else obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def import_extensions(modules: Iterable[str] | None) -> None:
    """Import the modules named in a config's ``extensions`` list, so that their ``register``
    decorators run before any part is built; a module that cannot be imported is a one-line error."""
    for name in modules or ():
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ImportError(f"extensions: cannot import {name!r} ({err}); is its folder on PYTHONPATH?") from err
