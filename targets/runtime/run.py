"""Verify and time a compressor bundle on the machine this runs on; print or write its JSON.

    python3 run.py [BUNDLE] [--dense DENSE_BUNDLE] [--out result.json] [--threads N]

BUNDLE (default: this script's folder) holds ``manifest.json``, the artifact (``model.so`` and
its weights ``params.npz`` for the TVM runtime, ``model.ort``/``model.onnx`` for ONNX Runtime),
``inputs.npz`` and the torch
model's outputs for them, ``expected.npz``. The artifact's outputs are compared with those
(tolerance ``atol + rtol * max|expected|``, as on the host), then timed; with ``--dense`` the
unpruned model's bundle is verified too and both are timed taking turns, each turn in a worker
process of its own (``worker.py``: no runtime's threads disturb another's). Needs numpy and the
artifact's runtime (``apache-tvm`` or ``onnxruntime``), nothing else. Exit 1 when an output
differs (no latency is reported for a wrong artifact).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__:
    from . import check, measure
else:  # a script beside its files, in a bundle or on a device
    import check
    import measure

Run = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PARAMS = "params.npz"  # a TVM library's weights, beside it: ``main`` takes (*inputs, *params)


def onnx_data(model: str | Path) -> Path:
    """The weights file of the ONNX model ``model`` (``model.onnx.data``), where it has one."""
    return Path(model).with_name(Path(model).name + ".data")


def read_params(artifact: str | Path) -> Iterator[np.ndarray]:
    """The weights of the TVM library ``artifact`` in ``main``'s order, read one at a time."""
    path = Path(artifact).with_name(PARAMS)
    if not path.is_file():
        return
    with np.load(path) as archive:
        for i in range(len(archive.files)):
            yield archive[f"arr_{i}"]


def ort_session(path: str, threads: int, provider: str = "CPUExecutionProvider") -> Any:
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise RuntimeError(
            f"ONNX Runtime here has no {provider} (it has {', '.join(ort.get_available_providers())}); "
            "for CUDA install onnxruntime-gpu in place of onnxruntime"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=[provider])


def ort_runner(session: Any) -> Run:
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, dict(zip(names, inputs, strict=True)))]

    return run


def tvm_runner(path: str, device_type: str = "cpu") -> Run:
    """The Relax VM through the full ``tvm`` package."""
    import tvm
    from tvm import relax

    device = tvm.device(device_type, 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), device)
    params = [tvm.runtime.tensor(p, device) for p in read_params(path)]

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return flatten(vm["main"](*(tvm.runtime.tensor(x, device) for x in inputs), *params))

    return run


DLPACK = {"cpu": 1, "cuda": 2}
POOLED = 2  # the VM's pooled allocator


_RUNTIME_LOADED: set[str] = set()  # the runtime libraries this process has loaded


def tvm_runtime_runner(path: str, device_type: str, libs: Path) -> Run:
    """The Relax VM with only ``tvm_ffi`` (pip install apache-tvm-ffi) and the TVM runtime
    libraries shipped in ``libs``: no TVM compiler on the device."""
    import ctypes

    import tvm_ffi

    for name in ("libtvm_runtime.so", f"libtvm_runtime_{device_type}.so"):
        # Once per process: a second copy (another bundle's lib/, as with --dense) would register
        # every function again, which TVM answers by aborting.
        if (libs / name).is_file() and name not in _RUNTIME_LOADED:
            ctypes.CDLL(str(libs / name), ctypes.RTLD_GLOBAL)
            _RUNTIME_LOADED.add(name)
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")
    device, host = tvm_ffi.device(device_type, 0), tvm_ffi.device("cpu", 0)
    vm = tvm_ffi.load_module(path)["vm_load_executable"]()
    setup = [DLPACK[device_type], 0, POOLED] + ([] if device_type == "cpu" else [DLPACK["cpu"], 0, POOLED])
    vm["vm_initialization"](*setup)
    main = vm["main"]
    params: list[Any] = []
    for p in read_params(path):  # one host copy at a time
        params.append(alloc(list(p.shape), str(p.dtype), device, None))
        copy(tvm_ffi.from_dlpack(np.ascontiguousarray(p)), params[-1])

    inputs: dict[int, Any] = {}  # a device tensor per input position, reused while its shape holds

    def to_device(position: int, x: np.ndarray) -> Any:
        x = np.ascontiguousarray(x)
        tensor = inputs.get(position)
        if tensor is None or list(tensor.shape) != list(x.shape) or str(tensor.dtype) != str(x.dtype):
            tensor = inputs[position] = alloc(list(x.shape), str(x.dtype), device, None)
        copy(tvm_ffi.from_dlpack(x), tensor)
        return tensor

    def to_host(value: Any) -> list[np.ndarray]:
        if not hasattr(value, "__dlpack__"):
            return [a for v in value for a in to_host(v)]
        out = alloc(list(value.shape), str(value.dtype), host, None)
        copy(value, out)
        return [np.from_dlpack(out).copy()]  # owned: an output may alias an input tensor reused next call

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return to_host(main(*(to_device(i, x) for i, x in enumerate(arrays)), *params))

    return run


CUDA_BINARIES: dict[str, Path] = {}
_CUDA_HOOK: list[Any] = []  # the compile function the hook replaced (or None), once installed


def cuda_binary_name(source: str) -> str:
    """The file holding the binary of a CUDA module: named by its CUDA C's SHA-256."""
    return f"cuda-{hashlib.sha256(source.encode()).hexdigest()}.fatbin"


def install_cuda_binaries(folder: Path, compiler: bool = True) -> None:
    """Load TVM's CUDA modules from the binaries in ``folder`` (``cuda-<sha256>.fatbin``).

    TVM 0.27 keeps a CUDA module built where there is no CUDA driver as its CUDA C, compiled
    when the module is loaded through the global function ``tvm_callback_cuda_compile``, which
    only TVM's compiler package defines (NVRTC or nvcc). The compressor compiles every CUDA
    module with nvcc when it builds it; this hook answers with those binaries, so the GPU
    machine needs no compiler, and hands any other source to the function it replaced. With
    ``compiler`` false TVM's package is not imported: beside the runtime libraries of a bundle
    it would register every function a second time.
    """
    import tvm_ffi

    CUDA_BINARIES.update({p.name: p for p in Path(folder).glob("cuda-*.fatbin")})
    if _CUDA_HOOK:
        return
    if compiler:
        with contextlib.suppress(ImportError):  # TVM's compiler package registers its own on import
            import tvm  # noqa: F401
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    _CUDA_HOOK.append(previous)

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_cuda(source: str, *args: Any) -> bytes:
        path = CUDA_BINARIES.get(cuda_binary_name(source))
        if path is not None:
            return path.read_bytes()
        if previous is not None:
            return previous(source, *args)
        raise RuntimeError(
            f"no {cuda_binary_name(source)} for a CUDA module of this library and no CUDA compiler "
            "here: copy the whole bundle, or rebuild it on a machine with nvcc"
        )


def flatten(value: Any) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [a for v in value for a in flatten(v)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The bundle's manifest, after checking every file against its hash."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise SystemExit(
                f"error: {folder / name} is missing or does not match manifest.json; copy it again"
            )
    return manifest


def artifact_runner(backend: str, artifact: str, device_type: str, threads: int, libs: str | None) -> Run:
    """A runner for ``artifact``: ONNX Runtime, or the Relax VM (with only ``tvm_ffi`` and the
    runtime libraries in ``libs`` when given, else through the ``tvm`` package)."""
    if backend == "tvm" and device_type == "cuda":
        install_cuda_binaries(Path(artifact).parent, compiler=not libs)
    if backend == "tvm" and libs:
        return tvm_runtime_runner(artifact, device_type, Path(libs))
    if backend == "tvm":
        return tvm_runner(artifact, device_type)
    return ort_runner(ort_session(artifact, threads, PROVIDERS[device_type]))


def artifact_timer(
    backend: str,
    artifact: str,
    device_type: str,
    threads: int,
    libs: str | None,
    inputs: str,
    keys: list[str],
) -> Callable[[], object]:
    """One run of ``artifact`` on the arrays ``keys`` of the ``.npz`` file ``inputs``: what
    ``worker.py`` times (``measure.Factory(run.py, "artifact_timer", ...)``)."""
    run = artifact_runner(backend, artifact, device_type, threads, libs)
    with np.load(inputs) as archive:
        arrays = [archive[key] for key in keys]
    return lambda: run(arrays)


def load(folder: Path, threads: int) -> tuple[dict[str, Any], Run]:
    """The bundle's manifest and a runner for its artifact."""
    manifest = read_manifest(folder)
    return manifest, artifact_runner(*artifact_args(folder, manifest, threads))


def artifact_args(
    folder: Path, manifest: dict[str, Any], threads: int
) -> tuple[str, str, str, int, str | None]:
    artifact = str((folder / manifest["artifact"]).resolve())  # dlopen searches bare names
    libs = str(folder / "lib") if manifest["backend"] == "tvm" and (folder / "lib").is_dir() else None
    return manifest["backend"], artifact, manifest.get("device", "cpu"), threads, libs


def bundle_timer(folder: Path, manifest: dict[str, Any], threads: int) -> measure.Factory:
    """The bundle's artifact on its example input (trial 0), for a worker process."""
    keys = [f"t0_{i}" for i in range(len(manifest["inputs"]))]
    args = (*artifact_args(folder, manifest, threads), str(folder / "inputs.npz"), keys)
    return measure.Factory(str(Path(__file__).resolve()), "artifact_timer", args)


def cases(folder: Path, manifest: dict[str, Any]) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """(inputs, expected outputs) per trial, from ``inputs.npz`` and ``expected.npz``."""
    inputs, expected = np.load(folder / "inputs.npz"), np.load(folder / "expected.npz")
    return [
        (
            [inputs[f"t{t}_{i}"] for i in range(len(manifest["inputs"]))],
            [expected[f"t{t}_{o}"] for o in range(manifest["num_outputs"])],
        )
        for t in range(manifest["trials"])
    ]


def verify(folder: Path, manifest: dict[str, Any], run: Run) -> dict[str, Any]:
    worst, tolerance = 0.0, 0.0
    tol = manifest["tolerance"]
    for inputs, expected in cases(folder, manifest):
        error, limit, problem = check.compare(expected, run(inputs), tol["atol"], tol["rtol"])
        if problem:
            return {"verified": False, "error": problem, "max_abs_error": error, "tolerance": limit}
        worst, tolerance = max(worst, error), max(tolerance, limit)
    return {"verified": True, "max_abs_error": worst, "tolerance": tolerance, "trials": manifest["trials"]}


def run_bundle(
    folder: Path, dense: Path | None = None, threads: int | None = None, min_seconds: float = 1.0
) -> dict[str, Any]:
    """Verify the bundle in ``folder`` (and ``dense``), then time it (and ``dense``, in turns)."""
    threads = threads or os.cpu_count() or 1
    manifest, run = load(folder, threads)
    result: dict[str, Any] = {
        "target": manifest["target"],
        "backend": manifest["backend"],
        "machine": platform.machine(),
        "threads": threads,
        **verify(folder, manifest, run),
    }
    if not result["verified"]:
        return result
    timers = {"model": bundle_timer(folder, manifest, threads)}
    if dense is not None:
        dense_manifest, dense_run = load(dense, threads)
        checked = verify(dense, dense_manifest, dense_run)
        if not checked["verified"]:
            return {**result, "verified": False, "error": f"the dense bundle: {checked['error']}"}
        timers["dense"] = bundle_timer(dense, dense_manifest, threads)
        del dense_run
    del run  # each model is timed alone, in worker processes of its own
    timed = measure.measure(timers, min_seconds=min_seconds)
    result["latency_ms"] = timed["model"].to_json()
    if dense is not None:
        result["dense_latency_ms"] = timed["dense"].to_json()
        result["speedup"] = round(timed["dense"].median / timed["model"].median, 4)
    return result


def npz_bytes(arrays: Sequence[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def npz_arrays(data: bytes) -> list[np.ndarray]:
    archive = np.load(io.BytesIO(data))
    return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--dense", help="the unpruned model's bundle, timed in turns with this one")
    parser.add_argument("--out", help="write the JSON here as well as printing it")
    parser.add_argument("--threads", type=int, help="threads for ONNX Runtime (default: every core)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per model")
    args = parser.parse_args(argv)
    dense = Path(args.dense) if args.dense else None
    result = run_bundle(Path(args.bundle), dense, args.threads, args.min_seconds)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    if not result["verified"]:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
