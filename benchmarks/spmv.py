"""Sparse weight x dense activations on this CPU: our TIR kernels vs every dense runtime, hot and cold.

    python benchmarks/spmv.py            # all shapes (one to two hours on 2 cores)
    python benchmarks/spmv.py --quick    # 1024x1024 and 7680x2560 at batch 1
    python benchmarks/spmv.py --shapes 4096x1024 --batches 4 16 --name spmv_batched

For each weight shape (N x K), sparsity and batch B it times ``y = x @ W.T`` (x: B x K):
ONNX Runtime dense (MatMul), torch dense (``F.linear``), TVM dense (our dense TIR kernel),
torch CSR (``torch.sparse.mm``), and ours: CSR (unstructured pattern), CSR with fp16 values,
BSR 1x4 and 4x1 (the same sparsity in blocks). Pruning patterns are random at the given
granularity, which is what magnitude pruning of these random weights gives.

Method. Each of our kernels (and TVM dense) is first tuned as the backend does: every variant
is compiled, checked against numpy and timed in this process, the fastest kept. Then every
runtime is timed alone, each turn in a fresh worker process (``targets.runtime.measure``), so
no other runtime's idle thread pool spins on the cores; every worker checks every copy's output
against numpy before timing it. Two regimes: *hot*, one weight called back to back (it may stay
in the last-level cache), and *cold*, a working set of independent copies of the weight (same
shape, same pruning) called in sequence on the same x, one call running them all, reported per
weight; there are enough copies that even the smallest operand (the sparsest format's packed
arrays) fills twice the LLC, so each call reads its weight from memory, as a deep model does.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# torch's OpenMP threads spin after a parallel region by default; on this 2-core host that makes
# torch.sparse.mm (CSR) 80x slower (16 ms instead of 0.2 ms at 1024x1024, 90%, batch 1, even with
# one thread). Passive: they sleep. Only torch reads it (ONNX Runtime and TVM have their own pools);
# the workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from benchmarks.common import speedup_result, write
from targets.runtime.measure import Factory, Latency, loop, measure, measure_samplers
from targets.tvm.cpu import candidates
from targets.tvm.devices import host_target, set_threads
from targets.tvm.kernels import Format, Packed, kernel, pack

SHAPES = [(1024, 1024), (2048, 2048), (4096, 1024), (7680, 2560)]
SPARSITIES = [0.8, 0.9, 0.95]
BATCHES = [1, 4, 16]
KINDS = {
    "TVM dense": ("dense", (1, 1)),
    "CSR": ("csr", (1, 1)),
    "CSR fp16": ("csr-fp16", (1, 1)),
    "BSR 1x4": ("bsr1x4", (1, 4)),
    "BSR 4x1": ("bsr4x1", (4, 1)),
}
"""Each of our kernels: the backend's candidates it is tuned over, and the pruning block of its weight."""
OURS_SHORT = ["CSR", "CSR fp16", "BSR 1x4", "BSR 4x1"]
PEERS = ["ORT dense", "torch dense", "TVM dense"]
PLAIN = [*PEERS, "torch CSR"]
COLUMNS = ["shape", "sparsity", "batch", "cold copies", "ORT dense", "torch dense", "TVM dense (tuned)"]
COLUMNS += ["torch CSR", *(f"ours {name}" for name in OURS_SHORT)]
LLC = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
MAX_COLD_BYTES = 4 << 30
"""Dense bytes of the cold working set at most (each dense runtime's worker holds all of it)."""
TIMERS = str(Path(__file__).resolve().with_name("spmv_timers.py"))
Weights = dict[tuple[int, int], np.ndarray]
"""One copy of the weight, pruned at each block size: (1, 1) unstructured, (1, 4), (4, 1)."""
log = logging.getLogger("spmv")


def pruned(
    weight: np.ndarray, sparsity: float, block: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    n, k = weight.shape
    r, c = block
    keep = rng.random((n // r, k // c)) >= sparsity
    return weight * np.repeat(np.repeat(keep, r, axis=0), c, axis=1)


def weights(n: int, k: int, sparsity: float, rng: np.random.Generator) -> Weights:
    """A fresh random weight, pruned to ``sparsity`` in each block size."""
    dense = rng.standard_normal((n, k), dtype=np.float32)
    return {block: pruned(dense, sparsity, block, rng) for block in ((1, 1), (1, 4), (4, 1))}


class Kernels:
    """Builds our kernels for the host, checks them against numpy, tunes and exports them."""

    def __init__(self) -> None:
        import tvm

        set_threads()  # TVM_NUM_THREADS: the workers inherit it
        self.tvm = tvm
        self.target = tvm.target.Target(host_target())
        self.dev = tvm.cpu()

    def compile(self, packed: Packed, batch: int) -> Any:
        return self.tvm.compile(self.tvm.IRModule({"main": kernel(packed, batch)}), target=self.target)

    def callable(self, weight: np.ndarray, fmt: Format, x: np.ndarray) -> Callable[[], object]:
        packed = pack(weight, fmt)
        fn = self.compile(packed, x.shape[0])["main"]
        y = np.zeros((x.shape[0], weight.shape[0]), np.float32)
        args = [self.tvm.runtime.tensor(a, self.dev) for a in (x, *packed.arrays, y)]
        fn(*args)
        expected = x @ weight.astype(fmt.dtype).astype(np.float32).T
        scale = float(np.abs(expected).max()) or 1.0
        error = float(np.abs(args[-1].numpy() - expected).max())
        if error > 1e-4 * scale:
            raise SystemExit(f"kernel {fmt.name} is wrong on {weight.shape}: max error {error:.3g}")
        return lambda: fn(*args)

    def best(self, weight: np.ndarray, x: np.ndarray, formats: list[Format]) -> Format:
        """Tune: time each variant of a kernel, keep the fastest (as the TVM backend does)."""
        by_name = {f.name: f for f in formats}
        samplers = {name: loop(self.callable(weight, f, x)) for name, f in by_name.items()}
        # In one process, taking turns: the variants share this one TVM thread pool, so none is
        # slowed by another runtime's spinning pool (that is what the worker processes are for).
        times = measure_samplers(samplers, min_samples=5, min_seconds=0.05)
        return by_name[min(times, key=lambda name: times[name].median)]

    def export(self, packed: Packed, batch: int, path: Path) -> None:
        self.compile(packed, batch).export_library(str(path))


def variants(weight: np.ndarray, batch: int, kind: str) -> list[Format]:
    """The backend's candidates for ``weight`` of one kind: dense, csr, csr fp16, bsr1x4, bsr4x1."""
    formats = candidates(weight, batch, threshold=0.5, fp16=kind == "csr-fp16")
    if kind == "dense":
        return [f for f in formats if not f.sparse]
    dtype = "float16" if kind == "csr-fp16" else "float32"
    block = {"csr": (1, 1), "csr-fp16": (1, 1), "bsr1x4": (1, 4), "bsr4x1": (4, 1)}[kind]
    return [f for f in formats if f.sparse and f.block == block and f.dtype == dtype]


def llc_bytes() -> int:
    """The last-level cache of this CPU (sysfs says e.g. ``32768K``); 32 MiB where it does not say."""
    try:
        text = LLC.read_text().strip().upper()
        return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
    except (OSError, ValueError, IndexError):
        return 32 << 20


def cold_copies(first: Weights, chosen: dict[str, Format]) -> tuple[int, int]:
    """Copies in the cold working set, and the bytes of its smallest operand: the packed arrays
    of the sparsest chosen format fill twice the LLC (so dense ones do many times over), within
    ``MAX_COLD_BYTES`` of dense weights."""
    smallest = min(pack(first[KINDS[name][1]], fmt).nbytes for name, fmt in chosen.items())
    dense = first[(1, 1)].nbytes
    copies = max(1, min(math.ceil(2 * llc_bytes() / smallest), MAX_COLD_BYTES // dense))
    if copies * smallest < 2 * llc_bytes():
        log.warning("cold working set capped at %d copies: %.0f MB < 2x LLC", copies, copies * smallest / 1e6)
    return copies, copies * smallest


def ort_stride(n: int, k: int) -> int:
    """Bytes between copies in ``wt.bin``: page-aligned, so ONNX Runtime may map them."""
    return -(-n * k * 4 // 65536) * 65536


def write_copy(w: Weights, i: int, dense: np.ndarray, ort_data: Any) -> None:
    """Copy ``i``'s unstructured weight: in ``dense.npy`` (torch, TVM dense) and, transposed as
    MatMul wants it, in ONNX Runtime's ``wt.bin``."""
    n, k = w[(1, 1)].shape
    dense[i] = w[(1, 1)]
    ort_data.seek(i * ort_stride(n, k))
    np.ascontiguousarray(w[(1, 1)].T).tofile(ort_data)


def write_copies(
    folder: Path,
    first: Weights,
    x: np.ndarray,
    chosen: dict[str, Format],
    copies: int,
    sparsity: float,
    rng: np.random.Generator,
) -> dict[str, list[Packed]]:
    """Make the copies (the first is ``first``, the hot weight), write the dense ones and each
    kernel's expected outputs (``KIND.expected.npy``); return the sparse kernels' packed copies."""
    n, k = first[(1, 1)].shape
    dense = np.lib.format.open_memmap(folder / "dense.npy", "w+", np.float32, (copies, n, k))
    packs: dict[str, list[Packed]] = {name: [] for name, fmt in chosen.items() if fmt.sparse}
    expected: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    with open(folder / "wt.bin", "wb") as ort_data:
        for i in range(copies):
            w = first if i == 0 else weights(n, k, sparsity, rng)
            write_copy(w, i, dense, ort_data)
            for name, fmt in chosen.items():
                weight = w[KINDS[name][1]]
                expected[name].append(x @ weight.astype(fmt.dtype).astype(np.float32).T)
                if fmt.sparse:
                    packs[name].append(pack(weight, fmt))
    dense.flush()
    for name, outputs in expected.items():
        np.save(folder / f"{KINDS[name][0]}.expected.npy", np.stack(outputs))
    return packs


def stacked(packs: list[Packed]) -> list[np.ndarray]:
    """Each kernel argument of every copy, stacked. Values and indices are zero-padded to the
    most slots of any copy: the kernel is specialised on the slots, and the padding is never
    read (``indptr`` ends before it), so one compiled function serves every copy."""
    slots = max(p.arrays[0].shape[0] for p in packs)

    def padded(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, slots - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    values, indices, indptr = zip(*(p.arrays for p in packs), strict=True)
    return [np.stack([padded(a) for a in values]), np.stack([padded(a) for a in indices]), np.stack(indptr)]


def export_kernels(
    folder: Path, kernels: Kernels, chosen: dict[str, Format], packs: dict[str, list[Packed]], batch: int
) -> None:
    """``KIND.so`` for each of our kernels, and ``KIND.J.npy``: its J-th argument of every copy."""
    dense = np.load(folder / "dense.npy", mmap_mode="r")
    for name, fmt in chosen.items():
        kind = KINDS[name][0]
        layout = Packed(fmt, dense.shape[1:], [dense[0]])
        if fmt.sparse:
            arrays = stacked(packs[name])
            for j, array in enumerate(arrays):
                np.save(folder / f"{kind}.{j}.npy", array)
            layout = Packed(fmt, dense.shape[1:], [a[0] for a in arrays])
        kernels.export(layout, batch, folder / f"{kind}.so")


def external(name: str, dims: list[int], offset: int) -> onnx.TensorProto:
    """An initializer whose data is in ``wt.bin`` at ``offset``."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "wt.bin"), ("offset", offset), ("length", math.prod(dims) * 4)):
        tensor.external_data.add(key=key, value=str(value))
    return tensor


def ort_model(folder: Path, regime: str, n: int, k: int, batch: int, copies: int) -> None:
    """``REGIME.onnx``: one MatMul per copy, each with its own initializer, every output returned."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", f"wt{i}"], [f"y{i}"]) for i in range(copies)],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [batch, n]) for i in range(copies)],
        [external(f"wt{i}", [k, n], i * ort_stride(n, k)) for i in range(copies)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, folder / f"{regime}.onnx")
    onnx.checker.check_model(str(folder / f"{regime}.onnx"))


def factories(folder: Path, chosen: dict[str, Format], copies: int) -> dict[str, Factory]:
    """What the workers time, ``RUNTIME/REGIME``: hot runs the first copy, cold every copy."""
    threads, libs = os.cpu_count() or 1, str(Path(importlib.util.find_spec("tvm").origin).parent / "lib")
    x, dense, expected = (str(folder / f) for f in ("x.npy", "dense.npy", "dense.expected.npy"))
    out: dict[str, Factory] = {}
    for regime, count in (("hot", 1), ("cold", copies)):
        out[f"ORT dense/{regime}"] = Factory(
            TIMERS, "ort_timer", (str(folder / f"{regime}.onnx"), x, expected, threads)
        )
        for name, sparse in (("torch dense", False), ("torch CSR", True)):
            args = (dense, x, expected, count, sparse, threads)
            out[f"{name}/{regime}"] = Factory(TIMERS, "torch_timer", args, torch=True)
        for name, fmt in chosen.items():
            kind = KINDS[name][0]
            arrays = [str(folder / f"{kind}.{j}.npy") for j in range(3)] if fmt.sparse else [dense]
            args = (libs, str(folder / f"{kind}.so"), arrays, x, str(folder / f"{kind}.expected.npy"), count)
            out[f"{name}/{regime}"] = Factory(TIMERS, "tvm_timer", args)
    return out


def prepare(
    folder: Path,
    kernels: Kernels,
    chosen: dict[str, Format],
    first: Weights,
    x: np.ndarray,
    copies: int,
    sparsity: float,
    rng: np.random.Generator,
) -> dict[str, Factory]:
    """Write everything the workers load into ``folder``; return their factories."""
    n, k = first[(1, 1)].shape
    np.save(folder / "x.npy", x)
    packs = write_copies(folder, first, x, chosen, copies, sparsity, rng)
    export_kernels(folder, kernels, chosen, packs, x.shape[0])
    for regime, count in (("hot", 1), ("cold", copies)):
        ort_model(folder, regime, n, k, x.shape[0], count)
    return factories(folder, chosen, copies)


def summary(
    shape: tuple[int, int],
    sparsity: float,
    batch: int,
    chosen: dict[str, Format],
    copies: int,
    smallest: int,
    latency: dict[str, Latency],
) -> dict[str, Any]:
    """One case: ms per weight and speedups (over that regime's fastest dense peer) per regime."""
    picked = {name: fmt.name for name, fmt in chosen.items()}
    result: dict[str, Any] = {"shape": list(shape), "sparsity": sparsity, "batch": batch, "variants": picked}
    result["cold_copies"] = copies
    result["cold_mb"] = {"dense": copies * math.prod(shape) * 4 / 1e6, "smallest": smallest / 1e6}
    for regime, count in (("hot", 1), ("cold", copies)):
        times = {name: latency[f"{name}/{regime}"].median / count for name in [*PLAIN, *OURS_SHORT]}
        timed = speedup_result(shape, sparsity, batch, picked, times, PEERS, OURS_SHORT)
        result[regime] = {"ms": timed["ms"], "speedup": timed["speedup"]}
    result["latency_ms_per_call"] = {name: t.to_json() for name, t in latency.items()}
    return result


def case(kernels: Kernels, n: int, k: int, sparsity: float, batch: int, rng: np.random.Generator) -> dict:
    x = rng.standard_normal((batch, k)).astype(np.float32)
    first = weights(n, k, sparsity, rng)
    chosen = {
        name: kernels.best(first[block], x, variants(first[block], batch, kind))
        for name, (kind, block) in KINDS.items()
    }
    copies, smallest = cold_copies(first, chosen)
    log.info("%dx%d %.0f%% batch %d: tuned, %d cold copies", n, k, sparsity * 100, batch, copies)
    with tempfile.TemporaryDirectory(prefix="spmv-") as folder:
        start = time.perf_counter()
        timers = prepare(Path(folder), kernels, chosen, first, x, copies, sparsity, rng)
        log.info("  prepared in %.0f s; timing in worker processes", time.perf_counter() - start)
        latency: dict[str, Latency] = measure(timers, min_samples=15, min_seconds=0.6)
    return summary((n, k), sparsity, batch, chosen, copies, smallest, latency)


def row(result: dict) -> list[Any]:
    """shape, sparsity, batch, the cold set, then ``hot / cold`` ms per weight (and speedups)."""
    n, k = result["shape"]
    hot, cold = result["hot"], result["cold"]
    cells = [f"{n}x{k}", f"{result['sparsity']:.0%}", result["batch"]]
    cells.append(f"{result['cold_copies']} ({result['cold_mb']['dense']:.0f} MB)")
    cells += [f"{hot['ms'][p]:.4f} / {cold['ms'][p]:.4f}" for p in PLAIN]
    return cells + [
        f"{hot['ms'][o]:.4f} ({hot['speedup'][o]:.2f}x) / {cold['ms'][o]:.4f} ({cold['speedup'][o]:.2f}x)"
        for o in OURS_SHORT
    ]


NOTES = """
y = x @ W.T with W of the given shape, x of `batch` rows; every cell is `hot / cold`, median ms
per weight. Hot: one weight, called back to back. Cold: the call runs every copy of the weight in
the cold set in sequence on the same x (ONNX Runtime: one graph, a MatMul per copy, each its own
initializer; torch: a loop; ours: one compiled function called on each copy's arrays) and the
time is divided by the copies; the copies are independent random weights pruned the same way,
enough that the smallest operand (the sparsest format's packed arrays) fills at least twice the
{llc} MB last-level cache, so no runtime finds its weight in cache (`cold copies`: how many, and
their dense size). Dense peers multiply the unstructured-pruned W; ours CSR/CSR fp16 use it too;
BSR 1x4 / 4x1 use W pruned to the same sparsity in 1x4 / 4x1 blocks. Speedups are against the
fastest of ORT dense, torch dense and TVM dense in the same row and regime. All with {threads}
threads. TVM dense is our dense TIR kernel; it and each of ours are tuned (hot) as the backend
does: every variant (accumulators, batch blocking, single-threaded for small products) checked
against numpy and timed in one process, the fastest kept (`variants` in the JSON). Then each
runtime is timed alone, 3 turns each in a fresh worker process (`targets/runtime/measure.py`),
so no other runtime's idle thread pool steals the cores (torch with OMP_WAIT_POLICY=PASSIVE: its
spinning OpenMP threads made torch CSR 80x slower on 2 cores); each worker checks every copy's
output against numpy first. Ours run there through `tvm_ffi` and the TVM runtime library only.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024x1024 and 7680x2560, batch 1 only")
    parser.add_argument("--shapes", nargs="+", help="NxK shapes instead of the default four")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes instead of 1 4 16")
    parser.add_argument("--sparsities", nargs="+", type=float, help="sparsities instead of 0.8 0.9 0.95")
    parser.add_argument("--name", help="results/NAME.md and NAME.json (spmv, or spmv_quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(os.cpu_count() or 1)  # as in the workers; the results' header reports it
    shapes, batches = (SHAPES[::3], [1]) if args.quick else (SHAPES, BATCHES)
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    batches, sparsities = args.batches or batches, args.sparsities or SPARSITIES
    kernels, rng, results, rows = Kernels(), np.random.default_rng(0), [], []
    for n, k in shapes:
        for sparsity in sparsities:
            for batch in batches:
                results.append(case(kernels, n, k, sparsity, batch, rng))
                rows.append(row(results[-1]))
                log.info("%s", rows[-1])
    write(
        args.name or ("spmv_quick" if args.quick else "spmv"),
        "Sparse x dense on the CPU: hot / cold median ms per weight, (speedup vs the best dense peer)",
        COLUMNS,
        rows,
        NOTES.format(llc=llc_bytes() >> 20, threads=os.cpu_count()),
        {"llc_bytes": llc_bytes(), "results": results},
    )


if __name__ == "__main__":
    main()
