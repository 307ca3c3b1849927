"""The GPU kit's run on the GPU machine (torch with CUDA, numpy, ``tvm_ffi`` and the kit's TVM
runtime libraries: no TVM compiler), and its report here: see ``gpu_kit.py``."""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_kit_cases import ROOT, RUNTIME, case_weights, formats_module

CALLS = 20  # calls per CUDA graph
L2_BYTES = 60 * 2**20  # the H200's L2 (the H100's: 50 MB); cold working sets are twice it at least
KIT = Path(__file__).resolve().with_name("gpu_kit.py")


def run_bundles(kit: Path, plan: dict[str, Any], limit: float) -> list[dict[str, Any]]:
    """Each model's pruned bundle verified and timed against its dense one by the bundles' runner
    (``run.py``: this checkout's, the same file as the bundle's own unless the bundle is older)."""
    results = []
    for name in plan["models"]:
        pruned, dense = kit / "bundles" / f"{name}-pruned", kit / "bundles" / f"{name}-dense"
        for bundle in (pruned, dense):  # the manifest lists lib/: put it back
            if not (bundle / "lib").exists():
                shutil.copytree(kit / "lib", bundle / "lib")
        out = kit / f"{name}.result.json"
        command = [sys.executable, str(RUNTIME / "run.py"), str(pruned), "--dense", str(dense)]
        command += ["--out", str(out), "--min-seconds", "0.5"]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            result = json.loads(out.read_text()) if out.is_file() else {"verified": False}
            if done.returncode and not result.get("error"):
                errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
                result["error"] = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            result = {"verified": False, "error": f"timed out after {limit:.0f} s"}
        result |= {"model": name, "seconds": round(time.perf_counter() - start, 1)}
        results.append(result)
        print(json.dumps(result), flush=True)
    return results


class Gpu:
    """Our kernels from the kit's libraries and torch's, verified, with CUDA-event samplers."""

    def __init__(self, kit: Path, device: str) -> None:
        import ctypes

        import torch
        import tvm_ffi

        for lib in ("libtvm_runtime.so", f"libtvm_runtime_{device}.so"):
            if (kit / "lib" / lib).is_file():
                ctypes.CDLL(str(kit / "lib" / lib), ctypes.RTLD_GLOBAL)
        sys.path.insert(0, str(RUNTIME))
        import run  # the bundles' runner: the CUDA compile hook that answers with the fatbins

        if device == "cuda":
            run.install_cuda_binaries(kit / "kernels", compiler=False)
        self.torch, self.ffi, self.kit, self.device = torch, tvm_ffi, kit, device
        self.eager: list[str] = []
        self.alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self.copy = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")

    def tensor(self, array: np.ndarray) -> Any:
        """A copy of ``array`` on the GPU, as TVM's runtime allocates it (any dtype: uint16 too)."""
        tensor = self.alloc(list(array.shape), str(array.dtype), self.ffi.device(self.device, 0), None)
        self.copy(self.ffi.from_dlpack(np.ascontiguousarray(array)), tensor)
        return tensor

    def host(self, tensor: Any) -> np.ndarray:
        out = self.alloc(list(tensor.shape), str(tensor.dtype), self.ffi.device("cpu", 0), None)
        self.copy(tensor, out)
        return np.from_dlpack(out).copy()

    def library(self, name: str) -> Any:
        return self.ffi.load_module(str(self.kit / "kernels" / f"{name}.so"))

    def sampler(self, fns: list[Callable[[], object]]) -> Callable[[int], float]:
        """Seconds per call by CUDA events around replays of a CUDA graph that cycles through
        ``fns`` (one per copy of the operands), at least ``CALLS`` calls; where a call cannot be
        captured, launched one by one (``self.eager`` names them)."""
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        calls = max(CALLS, len(fns))
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), self.ffi.use_torch_stream():  # warm up off the capture
            for fn in fns:
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        try:
            with self.ffi.use_torch_stream(torch.cuda.graph(graph)):
                for i in range(calls):
                    fns[i % len(fns)]()
        except Exception as e:
            self.eager.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
            graph = None

        def replay() -> None:
            if graph is not None:
                graph.replay()
                return
            with self.ffi.use_torch_stream():
                for i in range(calls):
                    fns[i % len(fns)]()

        def sample(number: int) -> float:
            replays = math.ceil(number / calls)
            start.record()
            for _ in range(replays):
                replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / (replays * calls)

        return sample


def check(name: str, got: np.ndarray, expected: np.ndarray, dtype: str) -> float:
    """The max error relative to the output's scale; raises past fp32's (fp16 values: fp16's)."""
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(got - expected).max()) / scale
    if not error <= (1e-4 if dtype == "float32" else 2e-3):
        raise ValueError(f"{name} is wrong: max error {error:.3g} of the output's scale")
    return error


def run_case(gpu: Gpu, case: dict[str, Any], fmt_module: Any) -> dict[str, Any]:
    """One case: every function verified; unless odd, each kind's fastest against the peers."""
    import measure  # the bundles' (numpy only), beside run.py
    import torch

    n, k = case["shape"]
    batch = case["batch"]
    weights = case_weights(n, k, case["sparsity"], case["seed"], case["odd"])
    x = np.random.default_rng(1000 + case["seed"]).standard_normal((batch, k), dtype=np.float32)
    lib = gpu.library(case["name"])
    hot: dict[str, Callable[[], object]] = {}
    copies: dict[str, list[Callable[[], object]]] = {}
    errors: dict[str, float] = {}

    def tvm_calls(name: str, arrays: list[np.ndarray], expected: np.ndarray, dtype: str, fn: Any) -> None:
        """Verified calls of ``fn`` (x, *arrays, y), one per copy of its operands."""
        count = 1 if case["odd"] else max(1, math.ceil(2 * L2_BYTES / sum(a.nbytes for a in [x, *arrays])))
        calls, ys = [], []
        for _ in range(count):
            args = [gpu.tensor(a) for a in (x, *arrays, np.zeros((batch, n), np.float32))]
            calls.append(lambda args=args: fn(*args))
            ys.append(args[-1])
        calls[0]()
        errors[name] = check(name, gpu.host(ys[0]), expected, dtype)
        hot[name], copies[name] = calls[0], calls

    for entry in case["functions"]:
        weight = weights[entry["weight"]]
        if entry["format"] is None:
            expected = x.astype(np.float64) @ weight.astype(np.float64).T
            tvm_calls("TVM dense", [weight.T.copy()], expected, "float32", lib[entry["name"]])
            continue
        fmt = fmt_module.Format(**{**entry["format"], "block": tuple(entry["format"]["block"])})
        packed = fmt_module.pack(weight, fmt)
        if [list(a.shape) for a in packed.arrays] != entry["shapes"]:
            raise ValueError(f"{case['name']} {fmt.name}: the weight made here packs to other sizes")
        expected = x.astype(np.float64) @ weight.astype(fmt.dtype).astype(np.float64).T
        tvm_calls(f"{entry['weight']}:{fmt.name}", packed.arrays, expected, fmt.dtype, lib[entry["name"]])
    result = {key: case[key] for key in ("name", "shape", "sparsity", "batch", "odd")} | {"errors": errors}
    if case["odd"]:
        return result

    xt = torch.from_numpy(x).cuda()
    xcol = xt.T.contiguous()
    expected = x.astype(np.float64) @ weights["csr"].astype(np.float64).T
    count = max(1, math.ceil(2 * L2_BYTES / weights["csr"].nbytes))
    dense = [torch.from_numpy(weights["csr"]).cuda() for _ in range(count)]
    csr = [w.to_sparse_csr() for w in dense]
    torch_peers = {
        "cuBLAS dense": [lambda w=w: torch.nn.functional.linear(xt, w) for w in dense],
        "cuSPARSE CSR": [lambda w=w: torch.sparse.mm(w, xcol).T for w in csr],
    }
    for name, calls in torch_peers.items():
        errors[name] = check(name, calls[0]().float().cpu().numpy(), expected, "float32")
        hot[name], copies[name] = calls[0], calls
    best: dict[str, str] = {}
    for kind in ("csr", "csr-fp16", "bsr4x1", "bsr1x4"):
        base, fp16 = kind.split("-")[0], kind.endswith("fp16")
        names = [v for v in hot if v.split(":")[0] == base and v.endswith("-fp16") == fp16]
        if names:
            samplers = {v: gpu.sampler([hot[v]]) for v in names}
            times = measure.measure_samplers(samplers, min_samples=5, min_seconds=0.05)
            best[kind] = min(times, key=lambda v: times[v].median)
    timed = ["cuBLAS dense", "TVM dense", "cuSPARSE CSR", *best.values()]
    for mode in ("hot", "cold"):
        samplers = {v: gpu.sampler([hot[v]] if mode == "hot" else copies[v]) for v in timed}
        latency = measure.measure_samplers(samplers, min_samples=20, min_seconds=0.2)
        result[f"{mode}_us"] = {v: round(t.median * 1e3, 3) for v, t in latency.items()}  # t: ms
    result["best"] = best
    if gpu.eager:
        result["not_captured"] = sorted(set(gpu.eager))
        gpu.eager.clear()
    return result


def run_kernels(kit: Path, plan: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    gpu, fmt_module = Gpu(kit, plan["device"]), formats_module()
    import torch

    results, start = [], time.perf_counter()
    for case in sorted(plan["cases"], key=lambda c: not c["odd"]):  # correctness first
        if time.perf_counter() - start > budget:
            results.append({"name": case["name"], "error": "not run: the kernels' time was up"})
            continue
        try:
            results.append(run_case(gpu, case, fmt_module))
        except Exception as e:  # one failure must not hide the rest
            results.append({"name": case["name"], "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(results[-1]), flush=True)
    cuda = plan["device"] == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"{platform.machine()} CPU (dry run)"
    return [{"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}, *results]


def table(results: list[dict[str, Any]]) -> str:
    """kernels.md: per case and mode, each peer's ms and ours with the speedup over the best dense."""
    head, *cases = results
    lines = [
        f"# Sparse x dense on {head['device']} (torch {head['torch']}, CUDA {head['cuda']}): "
        "median µs per call",
        "",
        "| shape | sparsity | batch | working set | cuBLAS dense | TVM dense | cuSPARSE CSR | ours CSR"
        " | ours CSR fp16 | ours BSR 4x1 | ours BSR 1x4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        if "hot_us" not in case:
            continue
        n, k = case["shape"]
        for mode in ("hot", "cold"):
            ms = case[f"{mode}_us"]
            dense = min(ms["cuBLAS dense"], ms["TVM dense"])
            cells = [f"{ms['cuBLAS dense']:.4f}", f"{ms['TVM dense']:.4f}"]
            cells.append(f"{ms['cuSPARSE CSR']:.4f} ({dense / ms['cuSPARSE CSR']:.2f}x)")
            for kind in ("csr", "csr-fp16", "bsr4x1", "bsr1x4"):
                v = case["best"].get(kind)
                cells.append(f"{ms[v]:.4f} ({dense / ms[v]:.2f}x)" if v else "")
            row = [f"{n}x{k}", f"{case['sparsity']:.0%}", str(case["batch"]), mode, *cells]
            lines.append("| " + " | ".join(row) + " |")
    checked = [c for c in cases if "errors" in c]
    failed = [c for c in cases if "error" in c]
    lines += [
        "",
        f"{len(checked)} cases checked against float64 ({sum(len(c['errors']) for c in checked)} kernels, "
        f"{sum(c['odd'] for c in checked)} odd-shaped cases), {len(failed)} failed"
        + "".join(f"\n- {c['name']}: {c['error']}" for c in failed),
    ]
    return "\n".join(lines) + "\n"


def run_all(kit: Path, out: Path, limit: float, parts: list[str]) -> None:
    plan = json.loads((kit / "plan.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = [sys.executable, str(KIT), "run-kernels", "--kit", str(kit), "--out", str(out)]
    command += ["--limit", str(limit * 0.5)]
    try:
        if "kernels" in parts:
            subprocess.run(command, timeout=limit * 0.6)
    except subprocess.TimeoutExpired:
        print("the kernels ran past their time", flush=True)
    if "bundles" not in parts:
        return
    left = max(limit - (time.perf_counter() - start), 30.0)
    bundles = run_bundles(kit, plan, left / max(len(plan["models"]), 1))
    host = {"machine": platform.machine(), "python": platform.python_version()}
    (out / "bundles.json").write_text(json.dumps({"host": host, "results": bundles}, indent=1) + "\n")


def bundles_table(data: dict[str, Any]) -> str:
    """bundles.md: per model, verified on the GPU or why not, and pruned vs dense latency."""
    lines = [
        "| model | verified (max abs error / tolerance) | pruned ms | dense ms | speedup |",
        "|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if not r.get("verified"):
            lines.append(f"| {r['model']} | no: {r.get('error')} | | | |")
            continue
        check = f"yes ({r['max_abs_error']:.2g} / {r['tolerance']:.2g}, {r['trials']} inputs)"
        ms = (r["latency_ms"]["median"], r["dense_latency_ms"]["median"])
        lines.append(f"| {r['model']} | {check} | {ms[0]:.4f} | {ms[1]:.4f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def report(results: Path, name: str) -> None:
    """The GPU's results (``run``'s folder) into ``benchmarks/results/NAME-kernels`` and ``-bundles``."""
    out = ROOT / "benchmarks" / "results"
    kernels = json.loads((results / "kernels.json").read_text())
    bundles = json.loads((results / "bundles.json").read_text())
    head = (
        "Commands: `python benchmarks/gpu_kit.py build` (here), `python3 benchmarks/gpu_kit.py run "
        f"--out DIR` (on the GPU machine), `python benchmarks/gpu_kit.py report DIR --name {name}`\n\n"
    )
    (out / f"{name}-kernels.json").write_text(json.dumps(kernels, indent=1) + "\n")
    (out / f"{name}-kernels.md").write_text(table(kernels).replace("\n\n", "\n\n" + head, 1) + KERNEL_NOTES)
    (out / f"{name}-bundles.json").write_text(json.dumps(bundles, indent=1) + "\n")
    title = f"# cuda/tvm bundles on {kernels[0]['device']}, run by run.py with the TVM runtime only\n\n"
    (out / f"{name}-bundles.md").write_text(title + head + bundles_table(bundles) + BUNDLE_NOTES)
    print(f"wrote {out}/{name}-kernels.md and {name}-bundles.md")


KERNEL_NOTES = """
y = x @ W.T, fp32 (fp16 values for "CSR fp16", accumulated in fp32), x of `batch` rows. cuBLAS
(torch `F.linear`), TVM dense (TVM's GPU schedule, as the backend keeps for dense weights),
cuSPARSE CSR (`torch.sparse.mm`) and ours CSR multiply the same unstructured pruned W; BSR 4x1 /
1x4 use W pruned to the same sparsity in blocks. Each of ours is the fastest of the backend's
GPU candidates (lanes per row, batch-inner; `best` in the JSON). Speedups are against the
faster of cuBLAS and TVM dense in the same row. Every kernel was checked against a float64
product first (odd shapes too: empty rows, a full row, K = 2, 45, 67, 1000). Timing: CUDA events
around CUDA graph replays of at least 20 calls, the callables taking turns, medians. *hot*: one
copy of the operands, called over and over (a sparse weight stays in the L2); *cold*: distinct
copies cycled, at least twice the L2 (120 MiB) in all, as a model of many layers reads them.
"""

BUNDLE_NOTES = """
Each zoo model pruned 90% (one-shot global magnitude, `compress --target cuda --backend tvm
--sparsity 0.9`) and unpruned (`--sparsity 0`), built here without a GPU (nvcc compiled the
kernels to fatbins for sm_90); on the GPU machine `run.py PRUNED --dense DENSE` verified each
against the torch outputs the bundle carries, then timed the two in turns, each turn in a process
of its own, on the wall clock per call: inputs copied to the GPU, the Relax VM, outputs copied
back. At batch 1 these models are a few hundred small kernels each, bound by launches and
copies, not by reading weights: pruning does not pay here, and the numbers say so.
"""
