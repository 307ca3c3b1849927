"""What a target and a backend are, and the compiled artifact they produce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from compressor.state import State
from targets.measure import Latency, measure
from targets.verify import Verification, verify


@dataclass(frozen=True)
class Target:
    """A device kind to lower for. ``backends`` lists the usable ones, preferred first;
    ``defaults`` those built when no ``--backend`` is given."""

    name: str
    description: str
    backends: tuple[str, ...]
    defaults: tuple[str, ...]
    emulated: bool = False


class Runner(Protocol):
    """A loaded artifact that runs on numpy inputs."""

    threads: int

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    name: str

    def build(self, state: State, target: Target, out_dir: Path) -> tuple[Path, Runner]:
        """Lower ``state.module`` for ``target`` into ``out_dir``; return the artifact and a runner."""
        ...


@dataclass
class Compiled:
    """A lowered model: its artifact, a runner for it, and the torch state it came from."""

    target: Target
    backend: str
    artifact: Path
    runner: Runner
    state: State
    verification: Verification | None = field(default=None)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.runner.run(inputs)

    def verify(self, trials: int = 3, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> Verification:
        """Compare with torch on the example inputs and fresh random ones; raise if it differs."""
        self.verification = verify(self.runner.run, self.state, trials, atol, rtol, seed)
        return self.verification

    def measure(self, min_samples: int = 30, min_seconds: float = 1.0) -> Latency:
        """Latency of the artifact on its example inputs (see ``targets.measure``)."""
        if self.verification is None:
            self.verify()
        return measure({"model": self.timer()}, min_samples, min_seconds)["model"]

    def timer(self):
        inputs = [t.numpy() for t in self.state.example_inputs]
        return lambda: self.runner.run(inputs)
