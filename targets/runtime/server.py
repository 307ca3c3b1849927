"""A TVM RPC server that also runs ONNX Runtime models, for boards with Python (and the emulator).

    python3 server.py --host 0.0.0.0 --port 9090 [--tracker HOST:PORT --key KEY]

It serves TVM modules exactly as ``python -m tvm.exec.rpc_server`` (or the TVM RPC app on a
phone) does, and registers a few more functions the host calls over the same session:
``compressor.device_info`` (machine, runtimes, whether emulated), and ``compressor.ort_load``,
``compressor.ort_run``, ``compressor.ort_time``, ``compressor.ort_free`` (an ONNX Runtime session
on an uploaded file; freed between timing turns, so that no idle session's threads spin beside
the model being timed),
``compressor.cuda_binaries`` (load uploaded CUDA binaries instead of compiling CUDA C here).
Needs apache-tvm (the runtime), numpy and, for ONNX models, onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, HERE)


def register() -> None:
    """Register the extra functions (runs in the server process; sessions inherit them)."""
    import itertools
    import time

    import numpy as np
    import run  # the bundle runner beside this file
    import tvm_ffi

    sessions: dict[int, tuple[object, object]] = {}
    handles = itertools.count()

    @tvm_ffi.register_global_func("compressor.device_info", override=True)
    def device_info() -> str:
        try:
            import onnxruntime

            ort_version, providers = onnxruntime.__version__, onnxruntime.get_available_providers()
        except ImportError:
            ort_version, providers = None, []
        import tvm

        return json.dumps(
            {
                "machine": platform.machine(),
                "system": platform.system(),
                "python": platform.python_version(),
                "tvm": tvm.__version__,
                "onnxruntime": ort_version,
                "ort_providers": providers,
                "numpy": np.__version__,
                "cpus": os.cpu_count(),
                "cpu": cpu_model(),
                "gpu": gpu_name(),
                "emulated": os.environ.get("COMPRESSOR_EMULATED") == "1",
            }
        )

    @tvm_ffi.register_global_func("compressor.cuda_binaries", override=True)
    def cuda_binaries(folder: str) -> None:
        run.install_cuda_binaries(Path(folder))

    @tvm_ffi.register_global_func("compressor.ort_load", override=True)
    def ort_load(path: str, threads: int, provider: str) -> int:
        session = run.ort_session(path, threads, provider)
        handle = next(handles)
        sessions[handle] = (session, run.ort_runner(session))
        return handle

    @tvm_ffi.register_global_func("compressor.ort_run", override=True)
    def ort_run(handle: int, inputs: bytes) -> bytearray:
        return bytearray(run.npz_bytes(sessions[handle][1](run.npz_arrays(bytes(inputs)))))

    @tvm_ffi.register_global_func("compressor.ort_time", override=True)
    def ort_time(handle: int, inputs: bytes, number: int) -> float:
        runner, arrays = sessions[handle][1], run.npz_arrays(bytes(inputs))
        start = time.perf_counter()
        for _ in range(number):
            runner(arrays)
        return (time.perf_counter() - start) / number

    @tvm_ffi.register_global_func("compressor.ort_free", override=True)
    def ort_free(handle: int) -> None:
        sessions.pop(handle, None)


def cpu_model() -> str:
    """The processor, as /proc/cpuinfo names it (x86: model name; arm64: implementer and part
    of each core kind, which tell a phone's big and little cores apart)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "Hardware", "CPU implementer", "CPU part")
    kinds = sorted({line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() in keys})
    return ", ".join(kinds) or platform.processor()


def gpu_name() -> str | None:
    """The first CUDA GPU's name and compute capability, when TVM sees one."""
    try:
        import tvm

        dev = tvm.cuda(0)
        return f"{dev.device_name} sm_{dev.compute_version.replace('.', '')}" if dev.exist else None
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--port-end", type=int, help="try ports up to this one (default: --port only)")
    parser.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker to register with")
    parser.add_argument("--key", default="", help="the device key at the tracker")
    args = parser.parse_args()
    # The server runs in a worker process: it must find run.py too.
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *filter(None, [os.environ.get("PYTHONPATH")])])
    from tvm import rpc

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    server = rpc.Server(
        args.host,
        args.port,
        args.port_end or args.port + 1,
        tracker_addr=tracker,
        key=args.key,
        silent=True,
        server_init_callback=register,
    )
    print(f"serving on {args.host}:{server.port}", flush=True)
    server.proc.join()


if __name__ == "__main__":
    main()
