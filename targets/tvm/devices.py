"""What differs per target for the TVM backend, registered by each target's module
(``targets/cpu.py``, ``arm64.py``, ``cuda.py``): the TVM target for the device, the compiler
that links the library, and the kernel policy (``Kernels``: which formats to time, which to pick
without timing, how to build them, what to write beside the library). The backend looks them up
by the target's name and never imports a device module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from targets.remote import Device
from targets.tvm.kernels import Format, Packed


class Kernels(Protocol):
    """A device family's kernel policy (``targets.tvm.cpu.CPU_KERNELS``, ``targets.tvm.gpu.GPU_KERNELS``)."""

    device_type: str  # "cpu" or "cuda": where the kernels run
    schedule: bool  # our schedules for what TVM's default pipeline leaves unscheduled
    direct_conv: bool  # convolutions through ``kernels.conv_cpu``
    recurrent: bool  # LSTM layers through ``kernels.recurrent_cpu``

    def candidates(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
        """The formats worth timing for ``weight`` at ``batch``."""
        ...

    def rule(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> Format:
        """The format picked without timing."""
        ...

    def kernel(self, packed: Packed, batch: int, target: dict[str, Any]) -> Any:
        """The TIR function the model calls for ``packed``, or None to keep TVM's matmul."""
        ...

    def gemm(self, target: dict[str, Any]) -> Callable[[int, int, int, int], Any] | None:
        """The GEMM for the matmuls of two activations: ``(g, m, k, n)`` -> TIR function, or
        None to leave them to TVM's pipeline."""
        ...

    def timed(self, packed: Packed, batch: int, target: dict[str, Any]) -> tuple[Any, Packed]:
        """The function timed for ``packed`` and the arrays it takes after ``x``."""
        ...

    def label(self, fmt: Format) -> str:
        """The name of ``fmt`` in the report."""
        ...

    def finish(self, module: Any, folder: Path, target: dict[str, Any]) -> None:
        """Write what a library built from ``module`` needs beside it in ``folder``."""
        ...

    def install(self, folder: Path) -> None:
        """Make what ``finish`` wrote loadable here, before the library in ``folder`` loads."""
        ...


@dataclass(frozen=True)
class TvmDevice:
    """How the TVM backend builds for one target."""

    target: Callable[[Device], dict[str, Any]]  # the TVM target, given the device it will run on
    kernels: Kernels
    compiler: Callable[[], Any] | None = None  # ``export_library``'s, where it is not this host's
    unavailable: Callable[[Device], str | None] = lambda device: None  # why it cannot run on ``device``


DEVICES: dict[str, TvmDevice] = {}
"""The TVM backend's devices by target name."""


def set_threads() -> int:
    """Use every core: TVM's pool defaults to the physical cores it detects, 1 on some VMs."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    return int(os.environ["TVM_NUM_THREADS"])


def host_target(device: object = None) -> dict[str, Any]:
    """The LLVM target of this host: TVM wants the triple and CPU name spelled out."""
    import tvm

    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


def vector_lanes(target: dict[str, Any]) -> int:
    """fp32 lanes the kernels vectorise by: 4 on NEON, 8 on x86-64 (LLVM splits for SSE)."""
    return 4 if str(target.get("mtriple", "")).startswith("aarch64") else 8


def wide_lanes(target: dict[str, Any]) -> int:
    """fp32 lanes of the target's widest vectors: 16 where it has AVX-512, else ``vector_lanes``.
    The recurrent kernel uses them (its gate arithmetic and its blocks of ``W_hh``)."""
    import tvm

    lanes = vector_lanes(target)
    if lanes == 8 and tvm.target.codegen.target_has_features("avx512f", tvm.target.Target(target)):
        return 16
    return lanes
