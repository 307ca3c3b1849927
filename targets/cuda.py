"""The ``cuda`` target: an NVIDIA GPU on this host, or on a GPU server reached with ``--rpc``.

TVM builds for ``{"kind": "cuda", "arch": "sm_XX"}`` (the GPU's compute capability when one is
reachable, else ``$COMPRESSOR_CUDA_ARCH``, default ``sm_80``) with TVM's GPU schedules (dlight)
and an x86-64 host part; nvcc compiles the kernels, so this works without a GPU. ONNX Runtime
runs the ONNX model with its CUDA execution provider (``onnxruntime-gpu``, the ``cuda`` extra).
Without a GPU the artifacts and their bundle are built and kept, and the run ends with a
``DeviceError`` saying where to verify them: no unverified artifact is reported as good.
"""

from __future__ import annotations

import os
from typing import Any

from compressor.registry import TARGETS
from targets import tvm as tvm_backend
from targets.base import Target
from targets.remote import Device

CUDA = TARGETS.register("cuda")(
    Target(
        name="cuda",
        description="an NVIDIA GPU, here or on a GPU server over TVM RPC (--rpc, --tracker)",
        backends=("tvm", "onnxruntime"),
        defaults=("tvm", "onnxruntime"),
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
    dev = gpu(device)
    if dev is not None:
        return "sm_" + str(dev.compute_version).replace(".", "")
    return os.environ.get("COMPRESSOR_CUDA_ARCH", DEFAULT_ARCH)


def tvm_target(device: Device) -> dict[str, Any]:
    host = (
        tvm_backend.host_target()
        if device.session is None
        else {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    )
    return {"kind": "cuda", "arch": arch(device), "host": host}


def no_gpu(device: Device, backend: str) -> str:
    """Why ``backend``'s artifact cannot run on ``device``, and what to do."""
    where = "this host" if device.session is None else device.name
    return (
        f"no CUDA GPU on {where} to verify and time the cuda/{backend} artifact on; its bundle is kept: "
        "run python3 run.py in it on a GPU machine, or give --rpc HOST:PORT of a TVM RPC server on one"
    )


tvm_backend.TARGETS["cuda"] = tvm_target
