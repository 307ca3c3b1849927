"""The ``cuda`` target: an NVIDIA GPU on this host, or on a GPU server reached with ``--rpc``.

TVM builds for ``{"kind": "cuda", "arch": "sm_XX"}`` (the GPU's compute capability when one is
reachable, else ``$COMPRESSOR_CUDA_ARCH``, default ``sm_80``) with TVM's GPU schedules (dlight),
our sparse kernels where the weights are sparse enough (``targets.tvm.gpu``), and an
x86-64 host part. nvcc compiles the CUDA modules into fatbins beside the library
(``targets.tvm.gpu.compile_binaries``), so no GPU is needed to build and none of TVM's or CUDA's compilers to
run. ONNX Runtime runs the ONNX model with its CUDA execution provider (``onnxruntime-gpu``, the
``cuda`` extra). Without a GPU the artifacts and their bundle are built and kept, and the run ends
with a ``DeviceError`` saying where to verify them: no unverified artifact is reported as good.
"""

from __future__ import annotations

import os
from typing import Any

from compressor.registry import TARGETS
from targets.base import Target
from targets.remote import Device
from targets.tvm.devices import DEVICES, TvmDevice, host_target
from targets.tvm.gpu import GPU_KERNELS

CUDA = TARGETS.register("cuda")(
    Target(
        name="cuda",
        description="an NVIDIA GPU, here or on a GPU server over TVM RPC (--rpc, --tracker)",
        backends=("tvm", "onnxruntime"),
        rpc=True,
        device_type="cuda",
    )
)

DEFAULT_ARCH = "sm_80"


def gpu(device: Device) -> Any:
    """The first CUDA device of ``device`` (this host or the RPC session), or None."""
    import tvm

    try:
        dev = device.session.cuda(0) if device.session is not None else tvm.cuda(0)
        return dev if dev.exist else None
    except Exception:
        return None


def arch(device: Device) -> str:
    return _arch(gpu(device))


def _arch(dev: Any) -> str:
    if dev is not None:
        return "sm_" + str(dev.compute_version).replace(".", "")
    return os.environ.get("COMPRESSOR_CUDA_ARCH", DEFAULT_ARCH)


def tvm_target(device: Device) -> dict[str, Any]:
    # Where a CUDA driver is, TVM compiles CUDA modules as it builds them, with NVRTC unless
    # told otherwise; NVRTC needs cuda-bindings, nvcc is on the machines this builds on.
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    host = host_target() if device.session is None else {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    dev = gpu(device)
    target = {"kind": "cuda", "arch": _arch(dev), "host": host, **LIMITS}
    if dev is not None:
        target["max_shared_memory_per_block"] = int(dev.max_shared_memory_per_block)
        target["max_threads_per_block"] = int(dev.max_threads_per_block)
    return target


LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024, "thread_warp_size": 32}
"""What TVM's GPU schedules size their tiles by, where no GPU can be asked: every CUDA GPU since
sm_50 allows these."""


def no_gpu(device: Device, backend: str) -> str:
    """Why ``backend``'s artifact cannot run on ``device``, and what to do."""
    if device.session is None:
        where, fix = "this host", "or give --rpc HOST:PORT of a TVM RPC server on one"
    else:
        where, fix = device.name, "or point --rpc/--tracker at a server on one"
    return (
        f"no CUDA GPU on {where} to verify and time the cuda/{backend} artifact on; its bundle is "
        f"kept: run python3 run.py in it on a GPU machine, {fix}"
    )


def unavailable(device: Device) -> str | None:
    return no_gpu(device, "tvm") if gpu(device) is None else None


DEVICES["cuda"] = TvmDevice(target=tvm_target, kernels=GPU_KERNELS, unavailable=unavailable)
