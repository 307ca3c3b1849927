"""The kernel policy on CUDA GPUs: TVM's own dense schedule (dlight) against our sparse kernels
(``kernels.matmul_gpu``), timed on the GPU when one is reachable, else chosen by a cost model
(``gpu_rule``); and the CUDA modules of a built library compiled by nvcc into fatbins beside it,
so the GPU machine needs no compiler."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import LoweringError
from targets.runtime.run import cuda_binary_name, install_cuda_binaries
from targets.tvm.kernels import Format, Packed, block_fill, gpu_kernel, pack

GPU_DENSE = "dense-tvm"
"""What the dense matmul is called on a GPU: TVM's own GPU schedule (dlight), not a kernel of ours."""
GPU_MAX_BATCH = 16
"""Largest batch the sparse kernels are tried at on a GPU: beyond it a matmul stops being bound by
reading the weight, and dense tiling wins."""
SPARSE_EFFICIENCY = 0.4
"""The share of the GPU's memory bandwidth the sparse kernel is assumed to reach, relative to the
dense one (its gathers of ``x`` and short rows cost it): the cost model's one parameter."""


def gpu_lanes(weight: np.ndarray, unroll: int) -> int:
    """Lanes per row for the CSR kernel: about two chunks of ``unroll`` nonzeros per lane on an
    average row, a power of two from 4 to 32 (short rows leave a full warp mostly idle)."""
    chunks = np.count_nonzero(weight) / max(weight.shape[0], 1) / unroll
    lanes = 4
    while lanes < 32 and lanes * 2 < chunks:
        lanes *= 2
    return lanes


def gpu_tries_sparse(weight: np.ndarray, batch: int, threshold: float) -> bool:
    """Whether a sparse kernel is worth considering for ``weight`` at ``batch`` on a GPU."""
    sparsity = 1.0 - np.count_nonzero(weight) / weight.size
    return sparsity >= threshold and batch <= GPU_MAX_BATCH


def gpu_candidates(weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
    """The formats timed on a GPU: TVM's dense schedule always; at sparsity >= ``threshold`` and
    batch <= ``GPU_MAX_BATCH``, CSR with 4 to 32 lanes per row, BSR 4x1 and 1x4 with 32
    when half the values they store are nonzeros; at batch > 1 also the batch-inner (SpMM) form."""
    formats = [Format("dense", unroll=1)]
    if not gpu_tries_sparse(weight, batch, threshold):
        return formats
    sparse = [Format("bsr", (1, 1), 4, threads=t) for t in (4, 8, 16, 32)]
    for block in ((4, 1), (1, 4)):
        if weight.shape[1] >= block[1] and block_fill(weight, block) >= 0.5:
            sparse.append(Format("bsr", block, 4 // block[1], threads=32))
    if batch > 1:
        sparse += [replace(f, batch_inner=True) for f in sparse]
    if fp16:
        sparse += [replace(f, dtype="float16") for f in sparse]
    return formats + sparse


def gpu_rule(weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> Format:
    """The cost model used when no GPU is reachable to time on: a matmul at small batch is bound
    by reading its weight, so CSR (``gpu_lanes`` lanes per row; batch-inner at batch > 1) is
    chosen when its bytes, divided by ``SPARSE_EFFICIENCY``, are fewer than dense's. With uint16
    indices and fp32 values that is from about 74% sparse (fp16 values: about 61%)."""
    dense = Format("dense", unroll=1)
    if not gpu_tries_sparse(weight, batch, threshold):
        return dense
    fmt = Format(
        "bsr",
        (1, 1),
        4,
        dtype="float16" if fp16 else "float32",
        batch_inner=batch > 1,
        threads=gpu_lanes(weight, 4),
    )
    sparse_bytes = pack(weight, fmt).nbytes
    return fmt if sparse_bytes / SPARSE_EFFICIENCY < weight.size * 4 else dense


def gpu_dense_kernel(n: int, k: int, batch: int, target: Any) -> Any:
    """``y = x @ W.T`` scheduled by TVM's GPU rules (dlight GEMV / matmul), with ``W.T`` (K x N)
    given: the dense candidate, timed alone. The model keeps its matmul for TVM, which folds
    ``permute_dims(W)`` into a K x N constant and schedules it the same way."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight

    x = te.placeholder((batch, k), "float32", name="x")
    wt = te.placeholder((k, n), "float32", name="wt")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((batch, n), lambda b, i: te.sum(x[b, r] * wt[r, i], axis=r), name="y")
    mod = tvm.IRModule({"main": te.create_prim_func([x, wt, y])})
    rules = (dlight.gpu.GEMV(), dlight.gpu.Matmul(), dlight.gpu.Reduction(), dlight.gpu.Fallback())
    with tvm.target.Target(target):
        return dlight.ApplyDefaultSchedule(*rules)(mod)["main"]


def cuda_sources(module: Any) -> list[str]:
    """The CUDA C of every CUDA module imported by ``module`` (a built library)."""
    pending, sources = [module], []
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            sources.append(module.inspect_source())
        pending.extend(module.imports)
    return sources


def compile_binaries(sources: list[str], folder: Path, target: dict[str, Any]) -> list[Path]:
    """Compile each CUDA module's C (``cuda_sources``) with nvcc into ``folder``/cuda-<sha256>.fatbin: SASS
    for the target's arch and its PTX (which newer GPUs compile at load). TVM 0.27 stores CUDA
    modules built without a driver as CUDA C; the bundle's runner loads these binaries instead
    (``targets.runtime.run.install_cuda_binaries``), so the GPU machine needs no compiler."""
    if shutil.which("nvcc") is None:
        raise LoweringError(
            "nvcc not found: the cuda target compiles its kernels with it; install the CUDA "
            "toolkit (13.x) and put its bin/ on PATH"
        )
    import tvm
    from tvm.support import nvcc

    version = str(target["arch"]).removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{version},code=sm_{version}"]
    gencode += ["-gencode", f"arch=compute_{version},code=compute_{version}"]
    for stale in folder.glob("cuda-*.fatbin"):  # named by the source alone: maybe another arch's
        stale.unlink()
    paths = []
    with tvm.target.Target(target):
        for source in sources:
            path = folder / cuda_binary_name(source)
            path.write_bytes(bytes(nvcc.compile_cuda(source, "fatbin", arch=gencode, compiler="nvcc")))
            paths.append(path)
    return paths


class GpuKernels:
    device_type = "cuda"
    schedule = False  # TVM's GPU pipeline schedules the rest (dlight)
    direct_conv = False
    recurrent = False

    def candidates(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
        return gpu_candidates(weight, batch, threshold, fp16)

    def rule(self, weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> Format:
        return gpu_rule(weight, batch, threshold, fp16)

    def kernel(self, packed: Packed, batch: int, target: dict[str, Any]) -> Any:
        return gpu_kernel(packed, batch) if packed.format.sparse else None

    def gemm(self, target: dict[str, Any]) -> None:
        return None  # dlight's GPU matmul rule schedules them

    def timed(self, packed: Packed, batch: int, target: dict[str, Any]) -> tuple[Any, Packed]:
        """Dense is TVM's schedule of the model's matmul, whose weight TVM folds to K x N."""
        if packed.format.sparse:
            return gpu_kernel(packed, batch), packed
        transposed = replace(packed, arrays=[np.ascontiguousarray(packed.arrays[0].T)])
        return gpu_dense_kernel(*packed.shape, batch, target), transposed

    def label(self, fmt: Format) -> str:
        return fmt.name if fmt.sparse else GPU_DENSE

    def finish(self, module: Any, folder: Path, target: dict[str, Any]) -> None:
        """``model.cu`` (the kernels' source) and their fatbins."""
        sources = cuda_sources(module)
        (folder / "model.cu").write_text("\n".join(sources))
        compile_binaries(sources, folder, target)

    def install(self, folder: Path) -> None:
        install_cuda_binaries(folder)


GPU_KERNELS = GpuKernels()
