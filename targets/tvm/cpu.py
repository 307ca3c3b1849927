"""The kernel policy on CPUs (x86-64 and arm64): our dense and sparse matmul kernels, the dense
one's tuning space always and the sparse formats where the weight is sparse enough, timed per
weight on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from targets.tvm.devices import vector_lanes
from targets.tvm.kernels import Format, Packed, block_fill, gemm_kernel, kernel

SMALL = 1 << 20  # multiply-adds below which single-threaded kernels are candidates too


def candidates(weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
    """The formats worth timing for ``weight``: dense variants (the tuning space of the dense
    kernel) always; sparse ones only at sparsity >= ``threshold``, and block formats only when
    at least half of the values they store are nonzeros."""
    formats = [Format("dense", unroll=u) for u in (1, 2, 4)]
    if batch % 4 == 0:
        formats += [Format("dense", unroll=u, batch_block=4) for u in (1, 2)]
    if batch >= 4:  # a matrix of activations: the register-blocked GEMM
        formats.append(Format("gemm"))
    sparsity = 1.0 - np.count_nonzero(weight) / weight.size
    if sparsity >= threshold:
        formats += [Format("bsr", (1, 1), 4), Format("bsr", (1, 1), 8)]
        for block in ((1, 4), (4, 1), (4, 4), (8, 1)):
            if weight.shape[1] >= block[1] and block_fill(weight, block) >= 0.5:
                formats.append(Format("bsr", block, 4))
        if batch >= 4:  # the batch-inner variant of each format, with fewer accumulators
            inner = [
                replace(f, unroll=max(1, 4 // f.block[0]), batch_inner=True) for f in formats if f.sparse
            ]
            formats += list(dict.fromkeys(inner))
        if fp16:
            formats += [replace(f, dtype="float16") for f in formats if f.sparse]
    if weight.size * batch <= SMALL:  # starting the thread pool may cost more than the work
        formats += [replace(f, parallel=False) for f in formats]
    return formats


class CpuKernels:
    device_type = "cpu"
    schedule = True
    direct_conv = True
    recurrent = True

    def candidates(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
        return candidates(weight, batch, threshold, fp16)

    def rule(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> Format:
        """CSR above ``threshold``, the dense kernel below."""
        formats = candidates(weight, batch, threshold, fp16)
        sparse = [f for f in formats if f.sparse and f.block == (1, 1) and f.dtype == "float32"]
        return sparse[-1] if sparse else Format("dense", unroll=2)

    def kernel(self, packed: Packed, batch: int, target: dict[str, Any]) -> Any:
        return kernel(packed, batch, vector_lanes(target))

    def gemm(self, target: dict[str, Any]) -> Callable[[int, int, int, int], Any]:
        return partial(gemm_kernel, lanes=vector_lanes(target))

    def timed(self, packed: Packed, batch: int, target: dict[str, Any]) -> tuple[Any, Packed]:
        return self.kernel(packed, batch, target), packed

    def label(self, fmt: Format) -> str:
        return fmt.name

    def finish(self, module: Any, folder: Path, target: dict[str, Any]) -> None:
        pass

    def install(self, folder: Path) -> None:
        pass


CPU_KERNELS = CpuKernels()
