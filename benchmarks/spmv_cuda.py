"""Sparse weight x dense activations on a CUDA GPU: our TIR kernels vs cuBLAS, cuSPARSE and TVM.

    python benchmarks/spmv_cuda.py                     # on a GPU: all shapes, batch 1, 4, 16
    python benchmarks/spmv_cuda.py --shapes 7680x2560 --batches 1 --name spmv_cuda_quick
    python benchmarks/spmv_cuda.py --build-only        # anywhere: build for CUDA, check on the CPU

For each weight shape (N x K), sparsity and batch B it times ``y = x @ W.T`` (x: B x K) with
cuBLAS dense (torch ``F.linear``), TVM dense (TVM's GPU schedule, as the backend keeps for dense
weights), cuSPARSE CSR (``torch.sparse.mm``) and ours (``targets.tvm.kernels.gpu_kernel``): CSR,
CSR with fp16 values, BSR 4x1 and 1x4 (W pruned to the same sparsity in blocks), each the
fastest of the backend's GPU candidates (lanes per row, batch-inner). Per shape and batch, 2:4
semi-structured sparsity (torch, fp16, 50% sparse) against cuBLAS fp16 where torch runs it.

Every kernel's output is checked against a float64 reference first. Each callable is captured
``CALLS`` times in a CUDA graph (TVM's kernels too, through ``tvm_ffi.use_torch_stream``), so
launch overhead does not hide the kernels; ``--no-graphs`` launches them one by one. Samples are
timed with CUDA events, the callables taking turns (``targets.runtime.measure``); medians.

``--build-only`` needs no GPU: it builds every TVM kernel of every case for CUDA and runs ours
with serial thread loops on the CPU against numpy (``gpu_kernel(threads=False)``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import speedup_result, speedup_row, write
from benchmarks.spmv import pruned
from targets import cuda
from targets.remote import LOCAL
from targets.runtime.measure import measure_samplers
from targets.tvm.devices import host_target
from targets.tvm.gpu import gpu_candidates, gpu_dense_kernel
from targets.tvm.kernels import Format, gpu_kernel, pack

SHAPES = [(1024, 1024), (2048, 2048), (4096, 1024), (2560, 2560), (7680, 2560)]
SPARSITIES = [0.8, 0.9, 0.95]
BATCHES = [1, 4, 16]
CALLS = 20  # calls per CUDA graph
OURS = ["CSR", "CSR fp16", "BSR 4x1", "BSR 1x4"]
PEERS = ["cuBLAS dense", "TVM dense"]


def variants(weight: np.ndarray, batch: int, kind: str) -> list[Format]:
    """The backend's GPU candidates of one kind: csr, csr-fp16, bsr4x1, bsr1x4."""
    block = {"csr": (1, 1), "csr-fp16": (1, 1), "bsr4x1": (4, 1), "bsr1x4": (1, 4)}[kind]
    dtype = "float16" if kind == "csr-fp16" else "float32"
    formats = gpu_candidates(weight, batch, threshold=0.5, fp16=kind == "csr-fp16")
    return [f for f in formats if f.sparse and f.block == block and f.dtype == dtype]


def check(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(got - expected).max())
    if not error <= 1e-4 * scale:
        raise SystemExit(f"{name} is wrong: max error {error:.3g} (scale {scale:.3g})")


class Builder:
    """Builds TVM functions for the CUDA target (nvcc or NVRTC: no GPU needed)."""

    def __init__(self, arch: str | None = None) -> None:
        import tvm

        self.tvm = tvm
        self.target = cuda.tvm_target(LOCAL)  # the GPU's arch and limits where there is one
        if arch:
            self.target["arch"] = arch

    def build(self, func) -> object:
        tvm = self.tvm
        return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(self.target))

    def check_on_cpu(self, name: str, weight: np.ndarray, fmt: Format, x: np.ndarray) -> None:
        """Run ``fmt``'s kernel with serial thread loops here, against numpy."""
        tvm = self.tvm
        packed = pack(weight, fmt)
        lib = tvm.compile(
            tvm.IRModule({"main": gpu_kernel(packed, x.shape[0], threads=False)}),
            target=tvm.target.Target(host_target()),
        )
        args = [
            tvm.runtime.tensor(a) for a in (x, *packed.arrays, np.zeros((x.shape[0], weight.shape[0]), "f"))
        ]
        lib["main"](*args)
        check(f"{name} ({fmt.name}, serial on the CPU)", args[-1].numpy(), reference(weight, fmt, x))


def reference(weight: np.ndarray, fmt: Format, x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ weight.astype(fmt.dtype).astype(np.float64).T).astype(np.float32)


class Gpu:
    """Callables on the GPU over fixed inputs, each verified, and CUDA-event samplers for them."""

    def __init__(self, builder: Builder, graphs: bool) -> None:
        import tvm_ffi

        self.builder, self.graphs, self.ffi = builder, graphs, tvm_ffi
        self.tvm_dev = builder.tvm.cuda(0)

    def tvm_fn(self, name: str, func, arrays: list[np.ndarray], expected: np.ndarray) -> Callable[[], None]:
        lib = self.builder.build(func)
        tvm = self.builder.tvm
        args = [tvm.runtime.tensor(a, self.tvm_dev) for a in (*arrays, np.zeros(expected.shape, "f"))]
        fn = lib["main"]

        def call() -> None:
            with self.ffi.use_torch_stream():
                fn(*args)

        call()
        torch.cuda.synchronize()
        check(name, args[-1].numpy(), expected)
        return call

    def ours(self, name: str, weight: np.ndarray, fmt: Format, x: np.ndarray) -> Callable[[], None]:
        packed = pack(weight, fmt)
        func = gpu_kernel(packed, x.shape[0])
        return self.tvm_fn(f"{name} {fmt.name}", func, [x, *packed.arrays], reference(weight, fmt, x))

    def best(
        self, name: str, weight: np.ndarray, x: np.ndarray, formats: list[Format]
    ) -> tuple[str, Callable]:
        """Tune as the backend does on a GPU: time every candidate, keep the fastest."""
        fns = {f.name: self.ours(name, weight, f, x) for f in formats}
        times = measure_samplers(
            {v: self.sampler(fn) for v, fn in fns.items()}, min_samples=5, min_seconds=0.05
        )
        variant = min(times, key=lambda v: times[v].median)
        return variant, fns[variant]

    def torch_fn(
        self, name: str, fn: Callable[[], torch.Tensor], expected: np.ndarray
    ) -> Callable[[], object]:
        out = fn()
        torch.cuda.synchronize()
        check(name, out.float().cpu().numpy().reshape(expected.shape), expected)
        return fn

    def sampler(self, fn: Callable[[], object]) -> Callable[[int], float]:
        """Seconds per call, by CUDA events around ``number`` calls (``CALLS`` per graph replay)."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if self.graphs:
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up off the capture, as torch asks
                fn()
            torch.cuda.current_stream().wait_stream(stream)
            with self.ffi.use_torch_stream(torch.cuda.graph(graph)):
                for _ in range(CALLS):
                    fn()

        def sample(number: int) -> float:
            replays = math.ceil(number / CALLS) if self.graphs else number
            start.record()
            for _ in range(replays):
                if self.graphs:
                    graph.replay()
                else:
                    fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / (replays * (CALLS if self.graphs else 1))

        return sample


def weights(n: int, k: int, sparsity: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    dense = rng.standard_normal((n, k)).astype(np.float32)
    return {
        "dense": dense,
        "csr": pruned(dense, sparsity, (1, 1), rng),
        "bsr4x1": pruned(dense, sparsity, (4, 1), rng),
        "bsr1x4": pruned(dense, sparsity, (1, 4), rng),
    }


def build_only(
    builder: Builder, n: int, k: int, sparsity: float, batch: int, rng: np.random.Generator
) -> str:
    w = weights(n, k, sparsity, rng)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    builder.build(gpu_dense_kernel(n, k, batch, builder.target))
    built = 1
    for name, kind, weight in (
        ("CSR", "csr", w["csr"]),
        ("CSR fp16", "csr-fp16", w["csr"]),
        ("BSR 4x1", "bsr4x1", w["bsr4x1"]),
        ("BSR 1x4", "bsr1x4", w["bsr1x4"]),
    ):
        formats = variants(weight, batch, kind)
        for fmt in formats:
            builder.build(gpu_kernel(pack(weight, fmt), batch))
            builder.check_on_cpu(name, weight, fmt, x)
        built += len(formats)
    return f"{n}x{k} {sparsity:.0%} batch {batch}: {built} kernels built for CUDA, ours verified on the CPU"


def case(gpu: Gpu, n: int, k: int, sparsity: float, batch: int, rng: np.random.Generator) -> dict:
    w = weights(n, k, sparsity, rng)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    xt, wt = torch.from_numpy(x).cuda(), torch.from_numpy(w["csr"]).cuda()
    csr, xcol = wt.to_sparse_csr(), xt.T.contiguous()
    expected = reference(w["csr"], Format("dense"), x)
    fns = {
        "cuBLAS dense": gpu.torch_fn("cuBLAS", lambda: torch.nn.functional.linear(xt, wt), expected),
        "TVM dense": gpu.tvm_fn(
            "TVM dense", gpu_dense_kernel(n, k, batch, gpu.builder.target), [x, w["csr"].T.copy()], expected
        ),
        "cuSPARSE CSR": gpu.torch_fn("cuSPARSE", lambda: torch.sparse.mm(csr, xcol), expected.T),
    }
    chosen = {
        "CSR": gpu.best("CSR", w["csr"], x, variants(w["csr"], batch, "csr")),
        "CSR fp16": gpu.best("CSR fp16", w["csr"], x, variants(w["csr"], batch, "csr-fp16")),
        "BSR 4x1": gpu.best("BSR 4x1", w["bsr4x1"], x, variants(w["bsr4x1"], batch, "bsr4x1")),
        "BSR 1x4": gpu.best("BSR 1x4", w["bsr1x4"], x, variants(w["bsr1x4"], batch, "bsr1x4")),
    }
    fns |= {name: fn for name, (_, fn) in chosen.items()}
    latency = measure_samplers(
        {name: gpu.sampler(fn) for name, fn in fns.items()}, min_samples=20, min_seconds=0.2
    )
    times = {name: t.median for name, t in latency.items()}
    picked = {name: variant for name, (variant, _) in chosen.items()}
    return speedup_result((n, k), sparsity, batch, picked, times, PEERS, [*OURS, "cuSPARSE CSR"])


def semi_structured(gpu: Gpu, n: int, k: int, batch: int, rng: np.random.Generator) -> dict:
    """2:4 sparsity (two of every four weights along K kept) in fp16 against cuBLAS fp16."""
    from torch.sparse import to_sparse_semi_structured

    w = rng.standard_normal((n, k)).astype(np.float32)
    w.reshape(n, k // 4, 4)[..., :2] = 0
    x = rng.standard_normal((batch, k)).astype(np.float32)
    wt, xt = torch.from_numpy(w).cuda().half(), torch.from_numpy(x).cuda().half()
    expected = reference(w.astype(np.float16), Format("dense"), x.astype(np.float16))
    try:
        sparse = to_sparse_semi_structured(wt)
        fns = {
            "cuBLAS fp16": lambda: torch.nn.functional.linear(xt, wt),
            "2:4 fp16": lambda: torch.nn.functional.linear(xt, sparse),
        }
        for name, fn in fns.items():
            out = fn().float().cpu().numpy()
            scale = float(np.abs(expected).max())
            if not np.abs(out - expected).max() <= 1e-2 * scale:
                raise SystemExit(f"{name} is wrong on {n}x{k}")
    except Exception as e:  # torch runs 2:4 only on some GPUs, shapes and versions
        return {"shape": [n, k], "batch": batch, "error": str(e).splitlines()[0]}
    latency = measure_samplers(
        {name: gpu.sampler(fn) for name, fn in fns.items()}, min_samples=20, min_seconds=0.2
    )
    ms = {name: t.median for name, t in latency.items()}
    return {"shape": [n, k], "batch": batch, "ms": ms, "speedup": ms["cuBLAS fp16"] / ms["2:4 fp16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", help="NxK shapes instead of the default five")
    parser.add_argument("--sparsities", nargs="+", type=float, help="instead of 0.8 0.9 0.95")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes instead of 1 4 16")
    parser.add_argument("--name", default="spmv_cuda", help="results/NAME.md and NAME.json")
    parser.add_argument("--no-graphs", action="store_true", help="launch each call instead of graph replays")
    parser.add_argument(
        "--build-only", action="store_true", help="no GPU: build for CUDA, verify ours on the CPU"
    )
    parser.add_argument(
        "--arch", default=os.environ.get("COMPRESSOR_CUDA_ARCH", "sm_90"), help="for --build-only"
    )
    args = parser.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    sparsities, batches = args.sparsities or SPARSITIES, args.batches or BATCHES
    rng = np.random.default_rng(0)
    if args.build_only:
        builder = Builder(args.arch)
        for (n, k), sparsity, batch in ((s, p, b) for s in shapes for p in sparsities for b in batches):
            print(build_only(builder, n, k, sparsity, batch, rng), flush=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA GPU here (torch.cuda.is_available() is false): run this on a GPU machine with a CUDA "
            "build of torch, or use --build-only to build the kernels and check them on the CPU"
        )
    gpu = Gpu(Builder(), graphs=not args.no_graphs)
    results, rows, semi = [], [], []
    for n, k in shapes:
        for batch in batches:
            for sparsity in sparsities:
                results.append(case(gpu, n, k, sparsity, batch, rng))
                rows.append(speedup_row(results[-1], PEERS, ["cuSPARSE CSR", *OURS]))
                print(rows[-1], flush=True)
            s = semi_structured(gpu, n, k, batch, rng)
            semi.append(s)
            print(s, flush=True)
    notes = "\n".join(
        f"- {s['shape'][0]}x{s['shape'][1]} batch {s['batch']}: "
        + (
            f"cuBLAS fp16 {s['ms']['cuBLAS fp16']:.4f} ms, 2:4 {s['ms']['2:4 fp16']:.4f} ms "
            f"({s['speedup']:.2f}x)"
            if "ms" in s
            else f"2:4 not run by torch here ({s['error']})"
        )
        for s in semi
    )
    write(
        args.name,
        f"Sparse x dense on {torch.cuda.get_device_name()}: median ms per call, (speedup vs the best dense)",
        ["shape", "sparsity", "batch", *PEERS, "cuSPARSE CSR", *(f"ours {o}" for o in OURS)],
        rows,
        f"""
y = x @ W.T with W of the given shape, x of `batch` rows, fp32 (fp16 values for "CSR fp16",
accumulated in fp32). cuBLAS, TVM dense, cuSPARSE and ours CSR multiply the same unstructured
pruned W; BSR 4x1 / 1x4 use W pruned to the same sparsity in blocks. Speedups are against the
faster of cuBLAS and TVM dense in the same row. Every kernel verified against float64 first;
each of ours tuned over the backend's GPU candidates (`variants` in the JSON). Timing: CUDA
events, {"one launch per call" if args.no_graphs else f"CUDA graphs of {CALLS} calls"}, the
callables taking turns; torch {torch.__version__}, CUDA {torch.version.cuda}. 7680x2560 is a GRU
with hidden size 2560 (its three 2560x2560 gates stacked, as in DeepBench).

2:4 semi-structured (torch, fp16, W 50% sparse) vs cuBLAS fp16:
{notes}
""",
        {"device": torch.cuda.get_device_name(), "results": results, "semi_structured": semi},
    )


if __name__ == "__main__":
    main()
