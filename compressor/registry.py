"""A name -> object registry whose errors list the valid choices (as TVM's do)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compressor.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names to registered objects (pass classes, targets, backends, models)."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@PASSES.register("magnitude-prune")``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.plural} are: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


PASSES: Registry[type] = Registry("pass", "passes")
"""Pass classes by recipe name; filled by importing the ``passes`` package."""

ARCHITECTURES: Registry = Registry("architecture")
"""Model builders by name, for checkpoints; filled by importing the ``models`` package."""

TARGETS: Registry = Registry("target")
"""Devices to lower for (``cpu``, ...); filled by importing the ``targets`` package."""

BACKENDS: Registry = Registry("backend")
"""Compilers/runtimes (``onnxruntime``, ...); filled by importing the ``targets`` package."""
