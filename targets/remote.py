"""Devices reached over TVM RPC: a server on the device (``--rpc``), one handed out by a tracker
(``--tracker``/``--key``), or the arm64 emulator (``--emulate``); and runners that run
artifacts there.

TVM modules run through the standard RPC calls (upload, ``load_module``, a Relax VM on the
remote CPU, ``time_evaluator``), which the TVM RPC app on a phone serves. ONNX Runtime models
need the functions that ``targets/runtime/server.py`` adds to the server (a board with Python,
or the emulator). Every failure on the device becomes a ``DeviceError`` naming it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import BackendUnavailable, ConfigError, DeviceError
from targets.runtime.measure import Turn, Turner, turn
from targets.runtime.run import flatten, npz_arrays, npz_bytes, onnx_data, read_params

CONNECT_SECONDS = 10.0


@dataclass
class Device:
    """Where artifacts run: this host (``session`` None) or a TVM RPC session to a device."""

    name: str
    session: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    address: str = ""  # how it was reached: HOST:PORT, or the tracker's key

    @property
    def emulated(self) -> bool:
        return bool(self.info.get("emulated"))

    @property
    def cache_key(self) -> str:
        """What kernel timings depend on: which processor, how many cores, which GPU, whether
        emulated, as the bundle's server reports them. A plain TVM RPC server reports nothing:
        then the address (or tracker key) it was reached by stands for the device."""
        if self.session is None:
            return "local"
        if not self.info:
            return f"unknown device at {self.address}"
        keys = ("machine", "cpu", "cpus", "gpu", "emulated")
        return json.dumps({k: self.info.get(k) for k in keys}, sort_keys=True)

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn a failure of the device or the connection into one ``DeviceError`` line."""
        try:
            yield
        except DeviceError:
            raise
        except Exception as e:
            detail = str(e).strip().splitlines()
            reason = next(
                (line for line in reversed(detail) if "Error" in line), detail[-1] if detail else ""
            )
            raise DeviceError(
                f"{doing} on {self.name} failed ({type(e).__name__}: {reason.strip()})"
            ) from None


LOCAL = Device("this host")


def parse_address(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{option} wants HOST:PORT, got {text!r}")
    return host, int(port)


def _reachable(host: str, port: int, what: str, fix: str) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise DeviceError(f"cannot reach the {what} at {host}:{port} ({e.strerror or e}); {fix}") from None


def connect(address: str) -> Device:
    """A session with the TVM RPC server at ``address`` (``HOST:PORT``)."""
    from tvm import rpc

    host, port = parse_address(address, "--rpc")
    _reachable(
        host,
        port,
        "TVM RPC server",
        f"start one on the device (python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}, "
        "or the TVM RPC app) or fix --rpc",
    )
    device = Device(f"the device at {address}", address=address)
    with device.errors("opening an RPC session"):
        device.session = rpc.connect(host, port, session_timeout=0)
    device.info = device_info(device.session)
    return device


def request(address: str, key: str) -> Device:
    """A session with a device registered under ``key`` at the tracker at ``address``."""
    from tvm import rpc

    host, port = parse_address(address, "--tracker")
    _reachable(host, port, "TVM RPC tracker", "start it (python -m tvm.exec.rpc_tracker) or fix --tracker")
    device = Device(f"device {key!r} of the tracker at {address}", address=f"tracker key {key}")
    with device.errors("asking the tracker for a device"):
        tracker = rpc.connect_tracker(host, port)
        keys = {item["key"].split(":", 1)[-1] for item in tracker.summary()["server_info"]}
        if key not in keys:
            raise DeviceError(
                f"the tracker at {address} has no device with key {key!r} (it has: "
                f"{', '.join(sorted(keys)) or 'none'}); register one (server --tracker {address} --key {key})"
            )
        device.session = tracker.request(key, priority=1, session_timeout=0)
    device.info = device_info(device.session)
    return device


def device_info(session: Any) -> dict[str, Any]:
    """What ``targets/runtime/server.py`` tells of its machine; {} from other servers."""
    try:
        return json.loads(session.get_function("compressor.device_info")())
    except Exception:
        return {}


def upload(device: Device, path: Path, name: str | None = None) -> str:
    """Copy ``path`` to the device as ``name`` (default: a fresh one); return the name."""
    name = name or f"{uuid.uuid4().hex[:12]}-{path.name}"
    with device.errors(f"uploading {path.name}"):
        device.session.upload(str(path), name)
    return name


def upload_onnx(device: Device, model: Path) -> str:
    """Upload an ONNX model as one file: one with its weights beside it (``model.onnx.data``)
    goes up with them inlined, under a fresh name (two models' weights files share a name)."""
    if not onnx_data(model).is_file():
        return upload(device, model)
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / model.name
        onnx.save(onnx.load(str(model)), str(single))
        return upload(device, single)


def send_cuda_binaries(device: Device, folder: Path) -> None:
    """Upload the CUDA binaries in ``folder`` (``cuda-<sha256>.fatbin``) to the bundle's server,
    which then loads CUDA modules from them instead of compiling their CUDA C; a plain TVM RPC
    server (``device.info`` empty) compiles the CUDA C itself."""
    binaries = sorted(folder.glob("cuda-*.fatbin"))
    if not binaries or not device.info:
        return
    for binary in binaries:
        upload(device, binary, binary.name)  # named by their source's hash: the same name is the same file
    with device.errors("loading the CUDA binaries"):
        workpath = device.session.get_function("tvm.rpc.server.workpath")
        device.session.get_function("compressor.cuda_binaries")(str(Path(workpath(binaries[0].name)).parent))


def load_library(device: Device, path: Path, machine: str) -> Any:
    """Upload and load a shared library built for ``machine``; a wrong-architecture device says so.

    The CUDA binaries beside it go up first (``send_cuda_binaries``)."""
    send_cuda_binaries(device, path.parent)
    name = upload(device, path)
    try:
        return device.session.load_module(name)
    except Exception as e:
        text = str(e)
        if any(s in text for s in ("ELF", "wrong", "cannot open shared object", "architecture")):
            reason = text.strip().splitlines()[-1].split("is false: ")[-1].strip()
            seen = (
                f"it runs {device.info['machine']}" if device.info.get("machine") else "wrong architecture?"
            )
            raise DeviceError(
                f"{device.name} cannot load a library built for {machine} ({seen}: {reason}); "
                f"point --rpc or --tracker at an {machine} device"
            ) from None
        with device.errors(f"loading {path.name}"):
            raise


class RemoteTvmRunner:
    """A Relax VM on the device; inputs go up, outputs come back, timing uses the device's clock."""

    def __init__(self, device: Device, library: Path, machine: str, device_type: str = "cpu") -> None:
        import tvm
        from tvm import relax

        self.device = device
        self.threads = int(device.info.get("cpus") or 0)
        self.layers: list[dict[str, Any]] = []  # the kernel chosen per weight
        lib = load_library(device, library, machine)
        with device.errors("starting the Relax VM"):
            self.dev = getattr(device.session, device_type)(0)
            self.vm = relax.VirtualMachine(lib, self.dev)
        with device.errors("sending the weights"):
            self.params = [tvm.runtime.tensor(p, self.dev) for p in read_params(library)]

    def _set(self, inputs: Sequence[np.ndarray]) -> None:
        import tvm

        arrays = (tvm.runtime.tensor(np.ascontiguousarray(x), self.dev) for x in inputs)
        self.vm.set_input("main", *arrays, *self.params)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self.device.errors("running the model"):
            self._set(inputs)
            self.vm.invoke_stateful("main")
            return flatten(self.vm.get_outputs("main"))

    def release(self) -> None:
        pass  # the device's TVM modules share one thread pool: they cannot disturb each other

    def turner(self, inputs: Sequence[np.ndarray]) -> Turner:
        """Turns on the device's clock (``time_evaluator``)."""
        evaluators: dict[int, Any] = {}

        def sample(number: int) -> float:
            with self.device.errors("measuring"):
                if number not in evaluators:
                    evaluators[number] = self.vm.time_evaluator("invoke_stateful", self.dev, number=number)
                return float(evaluators[number]("main").mean)

        def take(seconds: float, min_samples: int, number: int | None) -> Turn:
            with self.device.errors("measuring"):
                self._set(inputs)
            return turn(sample, seconds, min_samples, number)

        return take


class RemoteOrtRunner:
    """An ONNX Runtime session on the device, through the functions of ``runtime/server.py``.

    The session is made when first needed and freed by ``release``: each timing turn loads it,
    times it on the device's clock and frees it, so no idle session's threads spin there beside
    the model being timed."""

    def __init__(self, device: Device, model: Path, provider: str = "CPUExecutionProvider") -> None:
        self.device = device
        self.provider = provider
        self.threads = int(device.info.get("cpus") or 1)
        self.handle: int | None = None
        try:
            device.session.get_function("compressor.ort_load")
        except Exception:
            raise BackendUnavailable(
                f"{device.name} serves TVM modules only, not ONNX Runtime; run the server of "
                "the bundle there (python3 server.py) or the bundle's run.py, or use --backend tvm"
            ) from None
        self.name = model.name
        remote = upload_onnx(device, model)
        with device.errors(f"loading {model.name} in ONNX Runtime"):
            self.path = device.session.get_function("tvm.rpc.server.workpath")(remote)
            self._run = device.session.get_function("compressor.ort_run")
            self._time = device.session.get_function("compressor.ort_time")
        self._load()

    def _load(self) -> int:
        if self.handle is None:
            with self.device.errors(f"loading {self.name} in ONNX Runtime"):
                load = self.device.session.get_function("compressor.ort_load")
                self.handle = int(load(self.path, self.threads, self.provider))
        return self.handle

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        handle = self._load()
        with self.device.errors("running the model"):
            return npz_arrays(bytes(self._run(handle, bytearray(npz_bytes(inputs)))))

    def release(self) -> None:
        if self.handle is None:
            return
        with contextlib.suppress(Exception):  # a server older than ort_free keeps the session
            self.device.session.get_function("compressor.ort_free")(self.handle)
        self.handle = None

    def turner(self, inputs: Sequence[np.ndarray]) -> Turner:
        data = bytearray(npz_bytes(inputs))

        def sample(number: int) -> float:
            with self.device.errors("measuring"):
                return float(self._time(self.handle, data, number))

        def take(seconds: float, min_samples: int, number: int | None) -> Turn:
            self._load()
            try:
                return turn(sample, seconds, min_samples, number)
            finally:
                self.release()

        return take
