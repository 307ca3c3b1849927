"""The deployable bundle: what goes to the device beside the artifact.

``manifest.json`` (target, backend, artifact, input shapes and dtypes, output count, tolerance,
the runtime versions it was built with, SHA-256 of every file), ``inputs.npz`` and
``expected.npz`` (the verification inputs and the torch model's outputs for them), and the
runners from ``targets/runtime`` — ``run.py`` verifies and times the bundle on the device with
only numpy and the runtime installed, ``server.py`` serves it over TVM RPC.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import Compiled
from targets.verify import trial_inputs

RUNTIME = Path(__file__).resolve().parent / "runtime"
RUNNERS = ("run.py", "server.py", "check.py", "measure.py", "worker.py")
RUNTIMES = {"tvm": "apache-tvm", "onnxruntime": "onnxruntime"}


def copy_tvm_runtime(lib: Path, device_type: str) -> None:
    """The TVM runtime libraries (a few MB, not the compiler's ~250 MB) for ``run.py`` to load
    with ``tvm_ffi``; the CUDA one needs the NVIDIA driver and libcudart.so.13 on the device."""
    import tvm

    source = Path(tvm.__file__).parent / "lib"
    lib.mkdir(exist_ok=True)
    for name in ("libtvm_runtime.so", *(["libtvm_runtime_cuda.so"] if device_type == "cuda" else [])):
        shutil.copy(source / name, lib / name)


def write_bundle(
    compiled: Compiled, trials: int = 3, seed: int = 0, atol: float = 1e-4, rtol: float = 1e-4
) -> dict[str, Any]:
    """Write the bundle beside ``compiled.artifact``; return its manifest."""
    folder = compiled.artifact.parent
    state = compiled.state
    cases = trial_inputs(state, trials, seed)
    inputs, expected = {}, {}
    for t, case in enumerate(cases):
        inputs.update({f"t{t}_{i}": x.numpy() for i, x in enumerate(case)})
        expected.update({f"t{t}_{o}": y.numpy() for o, y in enumerate(state.reference_outputs(case))})
    np.savez(folder / "inputs.npz", **inputs)
    np.savez(folder / "expected.npz", **expected)
    for name in RUNNERS:
        shutil.copy(RUNTIME / name, folder / name)
    if compiled.backend == "tvm" and compiled.target.machine == platform.machine():
        copy_tvm_runtime(folder / "lib", compiled.target.device_type)
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    runtime = RUNTIMES[compiled.backend]
    manifest = {
        "format": 1,
        "target": compiled.target.name,
        "machine": compiled.target.machine,
        "device": compiled.target.device_type,
        "backend": compiled.backend,
        "artifact": compiled.artifact.name,
        "inputs": [{"shape": list(x.shape), "dtype": str(x.numpy().dtype)} for x in state.example_inputs],
        "num_outputs": len(expected) // len(cases),
        "trials": len(cases),
        "tolerance": {"atol": atol, "rtol": rtol},
        "runtime": {
            runtime: metadata.version(runtime),
            "apache-tvm-ffi": metadata.version("apache-tvm-ffi"),
            "numpy": np.__version__,
        },
        "run": "python3 run.py [--dense DENSE_BUNDLE] [--out result.json]",
        "kernels": getattr(compiled.runner, "layers", None) or None,
        "files": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
