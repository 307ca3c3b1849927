"""The CPU GEMM (``targets/tvm/kernels/gemm_cpu.py``) on the constant-weight products of
transformers at batch > 1, against torch's matmul, and against itself without K blocks nor a
weight stored by panels (the layout before them).

Usage: ``python benchmarks/gemm.py``

Each of our variants is one TIR function timed on this host by ``KernelChooser.time_calls``
(2 threads, the variants in turns, 7 rounds, medians); torch alone afterwards in this process,
its thread pool the only one running. ``y = x @ W.T`` with ``x`` (tokens x K) random, ``W``
(N x K) random: BERT-base's attention and FFN shapes at 128 tokens, ViT-tiny's at 197. Every
variant's output is checked against numpy before it is timed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write
from targets.tvm.choose import KernelChooser
from targets.tvm.devices import host_target, set_threads, vector_lanes
from targets.tvm.kernels.formats import GEMM_PANEL, panels
from targets.tvm.kernels.gemm_cpu import gemm_kernel

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (197, 192, 768), (197, 768, 192)]
VARIANTS = {  # name: (K block, weight by panels)
    "whole K, W^T as is": (1 << 30, False),
    "K blocks of 256, W^T as is": (256, False),
    "K blocks of 256, W^T by panels (ours)": (256, True),
}


def torch_ms(x: np.ndarray, w: np.ndarray, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.from_numpy(x), torch.from_numpy(w)
    for _ in range(10):
        a @ b.T
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(20):
            a @ b.T
        times.append((time.perf_counter() - start) / 20)
    return float(np.median(times)) * 1e3


def main() -> None:
    import tvm

    threads = set_threads()
    target = host_target()
    lanes = vector_lanes(target)
    chooser = KernelChooser(target, cache=Path("/dev/null"))
    rng = np.random.default_rng(0)
    rows, data = [], {}
    for m, k, n in SHAPES:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        calls = []
        for kc, by_panels in VARIANTS.values():
            func = gemm_kernel(
                1, m, k, n, lanes, vectors=GEMM_PANEL // lanes, kc=kc, packed_b=by_panels, flat=True
            )
            stored = panels(w.T, GEMM_PANEL) if by_panels else np.ascontiguousarray(w.T)
            calls.append((func, [x, stored, np.zeros((m, n), np.float32)]))
        # every variant checked against numpy, all in one library
        funcs = {f"k{i}": func.with_attr("global_symbol", f"k{i}") for i, (func, _) in enumerate(calls)}
        lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(target))
        for i, (_, arrays) in enumerate(calls):
            args = [tvm.runtime.tensor(a) for a in arrays]
            lib[f"k{i}"](*args)
            np.testing.assert_allclose(args[2].numpy(), x @ w.T, rtol=1e-4, atol=1e-3)
        ours = [t * 1e3 for t in chooser.time_calls(calls)]
        reference = torch_ms(x, w, threads)
        flops = 2 * m * k * n
        shape = f"{m} x {k} x {n}"
        data[shape] = {"torch_ms": reference, **dict(zip(VARIANTS, ours, strict=True))}
        rows.append(
            [shape, "torch (oneDNN / MKL)", f"{reference:.3f}", f"{flops / reference / 1e6:.1f}", "1.00x"]
        )
        for name, ms in zip(VARIANTS, ours, strict=True):
            rows.append([shape, name, f"{ms:.3f}", f"{flops / ms / 1e6:.1f}", f"{reference / ms:.2f}x"])
    write(
        "gemm",
        f"CPU GEMM y = x @ W.T, {threads} threads",
        ["tokens x K x N", "kernel", "ms", "GFLOP/s", "vs torch"],
        rows,
        "`python benchmarks/gemm.py`: our GEMM's variants timed in turns by `KernelChooser.time_calls`"
        " (7 rounds, medians), torch alone after them in the same process; each variant's output"
        " checked against numpy first. *vs torch*: torch's median / this one.",
        data,
    )


if __name__ == "__main__":
    main()
