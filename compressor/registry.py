"""A name -> object registry whose errors list the valid choices (as TVM's do)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compressor.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps kebab-case names to registered objects (pass classes, targets, backends, models)."""

    def __init__(self, kind: str, plural: str | None = None, plugins: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.plugins = plugins
        self._items: dict[str, T] = {}

    def _load(self) -> None:
        """Import the package whose modules register into this registry (once, on first use)."""
        if self.plugins:
            plugins, self.plugins = self.plugins, None
            importlib.import_module(plugins)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@PASSES.register("magnitude-prune")``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.plural} are: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


PASSES: Registry[type] = Registry("pass", "passes", plugins="passes")
"""Pass classes by recipe name; the ``passes`` package registers them (imported on first use)."""

ARCHITECTURES: Registry = Registry("architecture", plugins="models")
"""Model builders by name, for checkpoints; filled by importing the ``models`` package."""

TARGETS: Registry = Registry("target", plugins="targets")
"""Devices to lower for (``cpu``, ...); filled by importing the ``targets`` package."""

BACKENDS: Registry = Registry("backend", plugins="targets")
"""Compilers/runtimes (``onnxruntime``, ...); filled by importing the ``targets`` package."""
