"""Sparse weight x dense activations on this CPU: our TIR kernels vs every dense runtime.

    python benchmarks/spmv.py            # all shapes (about 30 minutes on 2 cores)
    python benchmarks/spmv.py --quick    # 1024x1024 and 7680x2560 at batch 1
    python benchmarks/spmv.py --shapes 4096x1024 --batches 4 16 --name spmv_batched

For each weight shape (N x K), sparsity and batch B it times ``y = x @ W.T`` (x: B x K):
ONNX Runtime dense (MatMul), torch dense (``F.linear``), TVM dense (our dense TIR kernel,
tuned over its variants on this machine), torch CSR (``torch.sparse.mm``), and ours: CSR
(unstructured pattern), CSR with fp16 values, BSR 1x4 and 4x1 (the same sparsity in blocks).
Every kernel's output is checked against numpy first. The callables take turns sample by sample
(``targets.runtime.measure``), all with every core. Pruning patterns are random at the given granularity,
which is what magnitude pruning of these random weights gives.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The runtimes take turns on two cores: an idle pool that keeps spinning slows the next one.
# torch's OpenMP threads sleep when idle; TVM's spin ~1 ms, not its default ~10 ms.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "20000")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import speedup_result, speedup_row, write
from targets.kernels import Format, kernel, pack
from targets.runtime.measure import measure
from targets.tvm import candidates, host_target, set_threads

SHAPES = [(1024, 1024), (2048, 2048), (4096, 1024), (7680, 2560)]
SPARSITIES = [0.8, 0.9, 0.95]
BATCHES = [1, 4, 16]
COLUMNS = ["shape", "sparsity", "batch"]
OURS_SHORT = ["CSR", "CSR fp16", "BSR 1x4", "BSR 4x1"]
OURS = [f"ours {name}" for name in OURS_SHORT]


def pruned(weight: np.ndarray, sparsity: float, block: tuple[int, int], rng: np.random.Generator):
    n, k = weight.shape
    r, c = block
    keep = rng.random((n // r, k // c)) >= sparsity
    return weight * np.repeat(np.repeat(keep, r, axis=0), c, axis=1)


class Kernels:
    """Builds our kernels for the host and returns zero-argument callables over fixed inputs."""

    def __init__(self) -> None:
        import tvm

        set_threads()
        self.tvm = tvm
        self.target = tvm.target.Target(host_target())
        self.dev = tvm.cpu()

    def callable(self, weight: np.ndarray, fmt: Format, x: np.ndarray):
        packed = pack(weight, fmt)
        lib = self.tvm.compile(self.tvm.IRModule({"main": kernel(packed, x.shape[0])}), target=self.target)
        y = np.zeros((x.shape[0], weight.shape[0]), np.float32)
        args = [self.tvm.runtime.tensor(a, self.dev) for a in (x, *packed.arrays, y)]
        fn = lib["main"]
        fn(*args)
        expected = x @ weight.astype(fmt.dtype).astype(np.float32).T
        scale = float(np.abs(expected).max()) or 1.0
        error = float(np.abs(args[-1].numpy() - expected).max())
        if error > 1e-4 * scale:
            raise SystemExit(f"kernel {fmt.name} is wrong on {weight.shape}: max error {error:.3g}")
        return lambda: fn(*args)

    def best(self, weight: np.ndarray, x: np.ndarray, formats: list[Format]) -> tuple[str, object]:
        """Tune: time each variant of a kernel, keep the fastest (as the TVM backend does)."""
        variants = {f.name: self.callable(weight, f, x) for f in formats}
        times = measure(variants, min_samples=5, min_seconds=0.05)
        name = min(times, key=lambda v: times[v].median)
        return name, variants[name]


def variants(weight: np.ndarray, batch: int, kind: str) -> list[Format]:
    """The backend's candidates for ``weight`` of one kind: dense, csr, csr fp16, bsr1x4, bsr4x1."""
    formats = candidates(weight, batch, threshold=0.5, fp16=kind == "csr-fp16")
    if kind == "dense":
        return [f for f in formats if not f.sparse]
    dtype = "float16" if kind == "csr-fp16" else "float32"
    block = {"csr": (1, 1), "csr-fp16": (1, 1), "bsr1x4": (1, 4), "bsr4x1": (4, 1)}[kind]
    return [f for f in formats if f.sparse and f.block == block and f.dtype == dtype]


def ort_matmul(weight: np.ndarray, x: np.ndarray):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], weight.shape[0]])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "wt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(model)
    return lambda: session.run(None, {"x": x})


def torch_fns(weight: np.ndarray, x: np.ndarray):
    w, xt = torch.from_numpy(weight), torch.from_numpy(x)
    csr, xcol = w.to_sparse_csr(), xt.T.contiguous()

    def dense():
        with torch.inference_mode():
            return torch.nn.functional.linear(xt, w)

    def sparse():
        with torch.inference_mode():
            return torch.sparse.mm(csr, xcol)

    return dense, sparse


def case(kernels: Kernels, n: int, k: int, sparsity: float, batch: int, rng: np.random.Generator) -> dict:
    dense_w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    w = pruned(dense_w, sparsity, (1, 1), rng)
    w14, w41 = pruned(dense_w, sparsity, (1, 4), rng), pruned(dense_w, sparsity, (4, 1), rng)
    torch_dense, torch_csr = torch_fns(w, x)
    chosen = {
        "TVM dense": kernels.best(w, x, variants(w, batch, "dense")),
        "CSR": kernels.best(w, x, variants(w, batch, "csr")),
        "CSR fp16": kernels.best(w, x, variants(w, batch, "csr-fp16")),
        "BSR 1x4": kernels.best(w14, x, variants(w14, batch, "bsr1x4")),
        "BSR 4x1": kernels.best(w41, x, variants(w41, batch, "bsr4x1")),
    }
    fns = {"ORT dense": ort_matmul(w, x), "torch dense": torch_dense, "torch CSR": torch_csr}
    fns |= {name: fn for name, (_, fn) in chosen.items()}
    # Each turn starts with 20 ms of untimed runs: the previous runtime's pool stops spinning.
    latency = measure(fns, min_samples=10, min_seconds=0.15, settle_seconds=0.02)
    times = {name: t.median for name, t in latency.items()}
    picked = {name: variant for name, (variant, _) in chosen.items()}
    peers = ("ORT dense", "torch dense", "TVM dense")
    return speedup_result((n, k), sparsity, batch, picked, times, peers, OURS_SHORT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024x1024 and 7680x2560, batch 1 only")
    parser.add_argument("--shapes", nargs="+", help="NxK shapes instead of the default four")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes instead of 1 4 16")
    parser.add_argument("--name", help="results/NAME.md and NAME.json (spmv, or spmv_quick)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    shapes, batches = (SHAPES[::3], [1]) if args.quick else (SHAPES, BATCHES)
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    batches = args.batches or batches
    kernels, rng, results, rows = Kernels(), np.random.default_rng(0), [], []
    for n, k in shapes:
        for sparsity in SPARSITIES:
            for batch in batches:
                results.append(case(kernels, n, k, sparsity, batch, rng))
                peers = ("ORT dense", "torch dense", "TVM dense", "torch CSR")
                rows.append(speedup_row(results[-1], peers, OURS_SHORT))
                print(rows[-1], flush=True)
    write(
        args.name or ("spmv_quick" if args.quick else "spmv"),
        "Sparse x dense on the CPU: median ms per call, (speedup vs the best dense peer)",
        [*COLUMNS[:3], "ORT dense", "torch dense", "TVM dense (tuned)", "torch CSR", *OURS],
        rows,
        f"""
y = x @ W.T with W of the given shape, x of `batch` rows. Dense peers multiply the same
unstructured-pruned W; ours CSR/CSR fp16 use it too; BSR 1x4 / 4x1 use W pruned to the same
sparsity in 1x4 / 4x1 blocks. Speedups are against the fastest of ORT dense, torch dense and
TVM dense in the same row. All with {os.cpu_count()} threads; every kernel verified against
numpy before timing. TVM dense is our dense TIR kernel; it and each of ours are tuned as the
backend does: every variant (accumulators, batch blocking, single-threaded for small products)
timed first, the fastest kept (`variants` in the JSON). The runtimes take turns, each turn starting with 20 ms
of untimed runs so that the thread pool of the one before has stopped spinning (torch with
OMP_WAIT_POLICY=PASSIVE, TVM with TVM_THREAD_POOL_SPIN_COUNT=20000: idle pools sleep sooner).
""",
        {"results": results},
    )


if __name__ == "__main__":
    main()
