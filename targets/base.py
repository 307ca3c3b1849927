"""What a target and a backend are, and the compiled artifact they produce."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from compressor.errors import DeviceError
from compressor.state import State
from targets.runtime.measure import Latency, Sampler, loop, measure_samplers
from targets.verify import Verification, verify

if TYPE_CHECKING:
    from targets.remote import Device


def cache_root() -> Path:
    """``$COMPRESSOR_CACHE``, else ``$XDG_CACHE_HOME/compressor`` or ``~/.cache/compressor``."""
    root = os.environ.get("COMPRESSOR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressor"


@dataclass(frozen=True)
class Target:
    """A device kind to lower for. ``backends`` lists the usable ones, preferred first;
    ``defaults`` those built when no ``--backend`` is given."""

    name: str
    description: str
    backends: tuple[str, ...]
    defaults: tuple[str, ...]
    remote: bool = False  # runs only on a device reached over RPC (--rpc, --tracker, --emulate)
    rpc: bool = False  # accepts --rpc / --tracker
    emulator: bool = False  # accepts --emulate
    machine: str = "x86_64"  # the host CPU of the device
    device_type: str = "cpu"  # where the model runs on it: "cpu" or "cuda"


class Runner(Protocol):
    """A loaded artifact that runs on numpy inputs (here, or on a device: then it also has
    ``sampler(inputs)``, timing with the device's clock)."""

    threads: int

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Unavailable:
    """A built artifact with nothing here to run it on: running it raises ``DeviceError``
    naming the fix (the job then keeps the artifact and its bundle)."""

    reason: str
    threads: int = 0

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise DeviceError(self.reason)

    def sampler(self, inputs: Sequence[np.ndarray]) -> Sampler:
        raise DeviceError(self.reason)


class Backend(Protocol):
    name: str

    def build(self, state: State, target: Target, out_dir: Path, device: Device) -> tuple[Path, Runner]:
        """Lower ``state.module`` for ``target`` into ``out_dir`` and load it on ``device``."""
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
    device: Device | None = None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.runner.run(inputs)

    def verify(self, trials: int = 3, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> Verification:
        """Compare with torch on the example inputs and fresh random ones; raise if it differs."""
        self.verification = verify(self.runner.run, self.state, trials, atol, rtol, seed)
        return self.verification

    def measure(self, min_samples: int = 30, min_seconds: float = 1.0) -> Latency:
        """Latency of the artifact on its example inputs (see ``targets.runtime.measure``)."""
        if self.verification is None:
            self.verify()
        return measure_samplers({"model": self.sampler()}, min_samples, min_seconds)["model"]

    def sampler(self) -> Sampler:
        """Times runs on the example inputs: on the device's clock when the runner has one."""
        inputs = [t.numpy() for t in self.state.example_inputs]
        if hasattr(self.runner, "sampler"):
            return self.runner.sampler(inputs)
        return loop(lambda: self.runner.run(inputs))

    def timer(self) -> Callable[[], object]:
        """One run on the example inputs, here."""
        inputs = [t.numpy() for t in self.state.example_inputs]
        return lambda: self.runner.run(inputs)
