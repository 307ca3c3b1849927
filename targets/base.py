"""What a target and a backend are, and the compiled artifact they produce."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from compressor.errors import DeviceError, LoweringError
from compressor.state import State
from targets.runtime.measure import (
    Factory,
    Latency,
    Turner,
    WorkerError,
    measure_turns,
    run_in_worker,
    worker_turner,
)
from targets.runtime.run import PARAMS, onnx_data
from targets.verify import Verification, verify

if TYPE_CHECKING:
    from targets.remote import Device


@dataclass(frozen=True)
class Target:
    """A device kind to lower for. ``backends`` lists the usable ones, preferred first (the one
    shipped when nothing is timed)."""

    name: str
    description: str
    backends: tuple[str, ...]
    remote: bool = False  # runs only on a device reached over RPC (--rpc, --tracker, --emulate)
    rpc: bool = False  # accepts --rpc / --tracker
    emulator: bool = False  # accepts --emulate
    machine: str = "x86_64"  # the host CPU of the device
    device_type: str = "cpu"  # where the model runs on it: "cpu" or "cuda"


RUN_PY = str(Path(__file__).resolve().parent / "runtime" / "run.py")


class Runner(Protocol):
    """A loaded artifact that runs on numpy inputs, here or on a device.

    It is timed in turns (``targets.runtime.measure``): here by a worker process that loads
    ``timer(inputs)``, the artifact's ``Factory``; on a device by ``turner(inputs)``, on the
    device's clock. ``release()`` frees what it holds (its runtime session), so that nothing of
    it runs beside the model being timed; ``run`` loads it again when needed.
    """

    threads: int

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def release(self) -> None: ...


class LocalRunner:
    """An artifact that runs on this host. Verification (``run_all``) and timing (``timer``) load
    it in worker processes (``targets/runtime/worker.py``), so this process never holds it: its
    memory goes back when the worker exits, and no runtime's threads stay alive here. ``run``
    loads it here, for the Python API, until ``release``.

    ``backend`` and the rest are ``run.py``'s ``artifact_runner`` arguments: ``libs`` is the
    folder of the TVM runtime libraries the workers load (no compiler there)."""

    def __init__(
        self, backend: str, artifact: Path, device_type: str, threads: int, libs: str | None = None
    ) -> None:
        self.backend, self.artifact, self.device_type = backend, artifact, device_type
        self.threads, self.libs = threads, libs
        self.layers: list[dict[str, object]] = []  # TVM: the kernel chosen per weight
        self._run: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None

    def _args(self, libs: str | None) -> tuple[str, str, str, int, str | None]:
        return self.backend, str(self.artifact.resolve()), self.device_type, self.threads, libs

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._run is None:
            from targets.runtime.run import artifact_runner

            self._run = artifact_runner(*self._args(None))  # through the full packages here
        return self._run(inputs)

    def run_all(self, cases: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        try:
            return run_in_worker(Factory(RUN_PY, "artifact_runner", self._args(self.libs)), cases)
        except WorkerError as e:
            raise LoweringError(f"{self.backend} cannot run {self.artifact.name} ({e})") from None

    def release(self) -> None:
        self._run = None

    def timer(self, inputs: str, keys: list[str]) -> Factory:
        return Factory(RUN_PY, "artifact_timer", (*self._args(self.libs), inputs, keys))


@dataclass
class Unavailable:
    """A built artifact with nothing here to run it on: running it raises ``error`` (a
    ``DeviceError``: no GPU here; ``BackendUnavailable``: no runtime for it on the device)
    naming the fix; the job then keeps the artifact and its bundle."""

    reason: str
    threads: int = 0
    error: type[DeviceError] = DeviceError

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise self.error(self.reason)

    def release(self) -> None:
        pass

    def turner(self, inputs: Sequence[np.ndarray]) -> Turner:
        raise self.error(self.reason)


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

    @property
    def nbytes(self) -> int:
        """The artifact's size on disk, with its weights file where it has one (TVM's
        ``params.npz``, ONNX's ``model.onnx.data``)."""
        a = self.artifact
        return sum(p.stat().st_size for p in (a, a.with_name(PARAMS), onnx_data(a)) if p.is_file())

    def verify(self, trials: int = 3, atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> Verification:
        """Compare with torch on the example inputs and fresh random ones; raise if it differs."""
        run_all = getattr(self.runner, "run_all", None) or (lambda cases: [self.runner.run(c) for c in cases])
        self.verification = verify(run_all, self.state, trials, atol, rtol, seed)
        return self.verification

    def measure(self, min_samples: int = 30, min_seconds: float = 1.0) -> Latency:
        """Latency of the artifact on its example inputs, timed alone (``measure_compiled``)."""
        if self.verification is None:
            self.verify()
        return measure_compiled({"model": self}, min_samples=min_samples, min_seconds=min_seconds)["model"]

    def release(self) -> None:
        self.runner.release()

    def turner(self, scratch: Path) -> Turner:
        """Takes timing turns of the artifact on its example inputs: in a worker process of its
        own here (the inputs go to ``scratch``), or on the device."""
        inputs = [t.numpy() for t in self.state.example_inputs]
        if hasattr(self.runner, "turner"):
            return self.runner.turner(inputs)
        path = scratch / f"inputs-{id(self)}.npz"
        np.savez(path, *inputs)
        factory: Factory = self.runner.timer(str(path), [f"arr_{i}" for i in range(len(inputs))])
        return worker_turner(factory)


def measure_compiled(
    models: dict[str, Compiled],
    turns: int = 3,
    min_samples: int = 30,
    min_seconds: float = 1.0,
    failed: dict[str, str] | None = None,
) -> dict[str, Latency]:
    """Time each model alone, taking turns (each turn here runs in a fresh worker process that
    holds only that model); every model's runtime session in this process is released first.
    A model that cannot be timed raises ``LoweringError`` naming it, or with ``failed`` given
    drops out with its reason there (``measure_turns``)."""
    import tempfile

    for compiled in models.values():
        compiled.release()
    with tempfile.TemporaryDirectory(prefix="compressor-timing-") as scratch:
        turners = {name: c.turner(Path(scratch)) for name, c in models.items()}
        try:
            return measure_turns(turners, turns, min_samples, min_seconds, failed)
        except WorkerError as e:
            raise LoweringError(str(e)) from None
