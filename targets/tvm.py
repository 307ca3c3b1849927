"""The TVM backend: ``torch.export`` -> Relax -> our matmul kernels -> LLVM -> ``model.so`` and
its weights, ``params.npz`` (``targets.tvm_params``).

Every ``matmul(x, permute_dims(W))`` with a constant weight — linear layers and each unrolled
step of an LSTM/GRU/RNN — becomes a ``call_tir`` to one of the kernels of ``targets.kernels``:
the tuned dense one, or a sparse format (CSR, BSR 1x4/4x1/4x4/8x1) when the weight is sparse
enough to try and the kernel measured faster on the target (``KernelChooser``; decisions are
cached by target, shape, batch and sparsity pattern). The rest of the graph takes TVM's default
CPU lowering. On a GPU the candidates are TVM's dense schedule and our CUDA kernels
(``gpu_candidates``), timed on the GPU when one is reachable, else chosen by a cost model
(``gpu_rule``).

The Relax torch frontend miscomputes negative indices (``x[:, -1]`` becomes an out-of-bounds
``take``), so they are made positive in the exported graph first; every artifact is verified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import DeviceError, LoweringError
from compressor.paths import cache_root
from compressor.registry import BACKENDS
from compressor.state import State, set_eval
from targets.base import LocalRunner, Runner, Target, Unavailable
from targets.kernels import Format, Packed, block_fill, gpu_kernel, kernel, pack
from targets.remote import LOCAL, Device, RemoteTvmRunner, load_library
from targets.runtime.run import install_cuda_binaries
from targets.tvm_library import pack_imports
from targets.tvm_params import LiftConstants

CACHE_VERSION = 2  # bump when the kernels change: cached timings are of the old ones
SMALL = 1 << 20  # multiply-adds below which single-threaded kernels are candidates too


def set_threads() -> int:
    """Use every core: TVM's pool defaults to the physical cores it detects, 1 on some VMs."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    return int(os.environ["TVM_NUM_THREADS"])


def host_target(device: object = None) -> dict[str, Any]:
    """The LLVM target of this host: TVM wants the triple and CPU name spelled out."""
    import tvm

    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


TARGETS: dict[str, Callable[[Device], dict[str, Any]]] = {"cpu": host_target}
"""The TVM target per compressor target, given the device it will run on; other target
modules add theirs."""
COMPILERS: dict[str, Callable[[], Any]] = {}
"""The ``export_library`` compiler per target, where it is not this host's (cross compilers)."""


def vector_lanes(target: dict[str, Any]) -> int:
    """fp32 lanes the kernels vectorise by: 4 on NEON, 8 on x86-64 (LLVM splits for SSE)."""
    return 4 if str(target.get("mtriple", "")).startswith("aarch64") else 8


# --- choosing a kernel per weight ------------------------------------------------------------


def candidates(weight: np.ndarray, batch: int, threshold: float, fp16: bool) -> list[Format]:
    """The formats worth timing for ``weight``: dense variants (the tuning space of the dense
    kernel) always; sparse ones only at sparsity >= ``threshold``, and block formats only when
    at least half of the values they store are nonzeros."""
    formats = [Format("dense", unroll=u) for u in (1, 2, 4)]
    if batch % 4 == 0:
        formats += [Format("dense", unroll=u, batch_block=4) for u in (1, 2)]
    sparsity = 1.0 - np.count_nonzero(weight) / weight.size
    if sparsity >= threshold:
        formats += [Format("bsr", (1, 1), 4), Format("bsr", (1, 1), 8)]
        for block in ((1, 4), (4, 1), (4, 4), (8, 1)):
            if weight.shape[1] >= block[1] and block_fill(weight, block) >= 0.5:
                formats.append(Format("bsr", block, 4))
        if batch >= 4:  # the batch-inner variant of each format, with fewer accumulators
            inner = [
                replace(f, unroll=max(1, 2 // f.block[0]), batch_inner=True) for f in formats if f.sparse
            ]
            formats += list(dict.fromkeys(inner))
        if fp16:
            formats += [replace(f, dtype="float16") for f in formats if f.sparse]
    if weight.size * batch <= SMALL:  # starting the thread pool may cost more than the work
        formats += [replace(f, parallel=False) for f in formats]
    return formats


@dataclass
class Choice:
    """The kernel picked for one weight, and what each candidate measured (ms)."""

    format: Format
    times_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False


class KernelChooser:
    """Times each candidate kernel for a weight on the target and keeps the fastest.

    ``timer(kernels, batch)`` returns seconds per call of each ``(func, packed)`` of ``kernels``;
    the default builds them for ``target`` into one library and times them on ``device`` (this
    host, or a remote one: the library is then exported with ``compiler`` and uploaded).
    With ``measure=False`` nothing is timed: the dense kernel below ``threshold``, CSR above —
    a rule, reported as such. Decisions are cached per target, device kind, shape, batch and
    sparsity pattern.
    """

    def __init__(
        self,
        target: dict[str, Any],
        threshold: float = 0.5,
        fp16: bool = False,
        measure: bool = True,
        cache: Path | None = None,
        timer: Callable[[list[tuple[Any, Packed]], int], list[float]] | None = None,
        device: Device = LOCAL,
        compiler: Any = None,
    ) -> None:
        self.target = target
        self.gpu = target["kind"] == "cuda"
        self.threshold = threshold
        self.fp16 = fp16
        self.measure = measure
        self.cache_path = cache if cache is not None else default_cache()
        self.device = device
        self.compiler = compiler
        self.timer = timer or self._time
        self._cache = self._load_cache()

    def choose(self, weight: np.ndarray, batch: int) -> Choice:
        if self.gpu:
            formats = gpu_candidates(weight, batch, self.threshold, self.fp16)
        else:
            formats = candidates(weight, batch, self.threshold, self.fp16)
        if not self.measure:
            return Choice(self._rule(weight, batch, formats))
        key = self._key(weight, batch, formats)
        hit = self._cache.get(key)
        if hit is not None:
            fmt = Format(**{**hit["format"], "block": tuple(hit["format"]["block"])})
            return Choice(fmt, hit["times_ms"], cached=True)
        kernels = [self._timed_kernel(pack(weight, fmt), batch) for fmt in formats]
        seconds = self.timer(kernels, batch)
        times = {self.label(fmt): t * 1e3 for fmt, t in zip(formats, seconds, strict=True)}
        best = min(formats, key=lambda f: times[self.label(f)])
        self._cache[key] = {"format": asdict(best), "times_ms": times}
        self._save_cache()
        return Choice(best, times)

    def build(self, packed: Packed, batch: int) -> Any:
        """The TIR function ``rewrite_matmuls`` puts in the model for ``packed``; on a GPU, None
        for dense (the matmul stays TVM's)."""
        if self.gpu:
            return gpu_kernel(packed, batch) if packed.format.sparse else None
        return kernel(packed, batch, vector_lanes(self.target))

    def label(self, fmt: Format) -> str:
        return GPU_DENSE if self.gpu and not fmt.sparse else fmt.name

    def _rule(self, weight: np.ndarray, batch: int, formats: list[Format]) -> Format:
        if self.gpu:
            return gpu_rule(weight, batch, self.threshold, self.fp16)
        sparse = [f for f in formats if f.sparse and f.block == (1, 1) and f.dtype == "float32"]
        return sparse[-1] if sparse else Format("dense", unroll=2)

    def _timed_kernel(self, packed: Packed, batch: int) -> tuple[Any, Packed]:
        """The function timed for ``packed`` and its arrays; on a GPU, dense is TVM's schedule of
        the model's matmul, whose weight TVM folds to K x N."""
        if self.gpu and not packed.format.sparse:
            transposed = replace(packed, arrays=[np.ascontiguousarray(packed.arrays[0].T)])
            return gpu_dense_kernel(*packed.shape, batch, self.target), transposed
        return self.build(packed, batch), packed

    def _key(self, weight: np.ndarray, batch: int, formats: list[Format]) -> str:
        h = hashlib.sha256()
        names = [f.name for f in formats]
        threads = set_threads() if self.device.session is None else self.device.info.get("cpus")
        key = [CACHE_VERSION, self.target, self.device.cache_key, threads, batch, list(weight.shape), names]
        h.update(json.dumps(key).encode())
        h.update(np.packbits(weight != 0).tobytes())
        return h.hexdigest()

    def _time(self, kernels: list[tuple[Any, Packed]], batch: int) -> list[float]:
        import tvm

        funcs = {f"k{i}": func.with_attr("global_symbol", f"k{i}") for i, (func, _) in enumerate(kernels)}
        lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(self.target))
        if self.device.session is None:
            set_threads()
            module, dev = lib.mod, tvm.cuda() if self.gpu else tvm.cpu()
        else:
            host = self.target.get("host", self.target)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "kernels.so"
                lib.export_library(str(path), fcompile=self.compiler)
                if self.gpu:
                    from targets.cuda import compile_binaries, cuda_sources

                    compile_binaries(cuda_sources(lib.mod), path.parent, self.target)
                module = load_library(self.device, path, str(host["mtriple"]).split("-")[0])
            dev = self.device.session.cuda() if self.gpu else self.device.session.cpu()
        times = []
        rng = np.random.default_rng(0)
        with self.device.errors("timing the candidate kernels"):
            for i, (_, packed) in enumerate(kernels):
                n, k = packed.shape
                x = rng.standard_normal((batch, k)).astype(np.float32)
                arrays = (x, *packed.arrays, np.zeros((batch, n), np.float32))
                args = [tvm.runtime.tensor(a, dev) for a in arrays]
                timer = module.time_evaluator(f"k{i}", dev, number=1, repeat=7, min_repeat_ms=10)
                times.append(float(np.median(timer(*args).results)))
        return times

    def _load_cache(self) -> dict[str, Any]:
        try:
            return json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save_cache(self) -> None:
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._cache))
            tmp.replace(self.cache_path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def default_cache() -> Path:
    """``tvm-kernels.json`` in ``cache_root()``."""
    return cache_root() / "tvm-kernels.json"


# --- on a GPU ------------------------------------------------------------------------------

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


# --- the Relax rewrite -----------------------------------------------------------------------


@dataclass
class Layer:
    """One constant-weight matmul of the graph and the kernel it got. ``calls``: how many times
    one run of the built model calls the kernel (a call TVM folds away, such as the first step
    of a recurrent layer from a zero state, is not counted); None for TVM's own kernels."""

    name: str
    shape: tuple[int, int]
    batch: int
    sparsity: float
    format: str
    calls: int | None
    times_ms: dict[str, float]
    cached: bool
    symbol: str | None = None  # the kernel's function in the built module

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["symbol"]
        return out


def count_calls(executable: Any, layers: list[Layer]) -> None:
    """Set each layer's ``calls`` from the VM's bytecode of ``main`` (after TVM's folding)."""
    import re

    called = re.findall(r"^\s*call\s+(\S+)", executable.as_text(), re.M)
    for layer in layers:
        layer.calls = called.count(layer.symbol) if layer.symbol else None


def rewrite_matmuls(
    mod: Any,
    choose: Callable[[np.ndarray, int], Choice],
    build: Callable[[Packed, int], Any],
    names: dict[bytes, str] | None = None,
) -> tuple[Any, list[Layer]]:
    """Replace each ``matmul(x, permute_dims(const W))`` in ``main`` with a kernel call.

    ``choose`` picks the format per (weight, batch); ``build`` makes its TIR function, or None
    to keep the matmul for TVM's own schedule. One kernel is built per (weight, batch); the
    unrolled steps of a recurrent layer share it. ``names`` maps a weight's ``weight_digest`` to
    its parameter name, for the report.
    """
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    names = names or {}
    weight_pattern = is_const()
    transpose_pattern = is_op("relax.permute_dims")(weight_pattern)
    pattern = is_op("relax.matmul")(wildcard(), transpose_pattern)
    kernels: dict[tuple[bytes, int], tuple[Any, list[Any], Layer]] = {}
    builder = relax.BlockBuilder(mod)

    def rewriter(call: Any, matches: dict) -> Any:
        x = call.args[0]
        axes = matches[transpose_pattern].attrs.axes
        if axes is not None and [int(a) for a in axes] != [1, 0]:
            return call
        weight = matches[weight_pattern].value.numpy()
        if weight.ndim != 2 or weight.dtype != np.float32 or call.ty.dtype != "float32":
            return call
        shape = [int(d) for d in x.ty.shape]
        n, k = weight.shape
        batch = int(np.prod(shape[:-1]))
        digest = weight_digest(weight)
        key = (digest, batch)
        if key not in kernels:
            choice = choose(weight, batch)
            packed: Packed = pack(weight, choice.format)
            symbol = f"{choice.format.name.replace('-', '_')}_{len(kernels)}"
            # dlight leaves it alone; opaque: never fused into another function (it keeps its name,
            # which ``count_calls`` looks for in the bytecode)
            attrs = {"global_symbol": symbol, "tirx.is_scheduled": True, "op_pattern": 8}
            func = build(packed, batch)
            gvar = None if func is None else builder.add_func(func.with_attrs(attrs), symbol)
            layer = Layer(
                name=names.get(digest, f"weight{len(kernels)}"),
                shape=(n, k),
                batch=batch,
                sparsity=round(1.0 - np.count_nonzero(weight) / weight.size, 4),
                format=choice.format.name if func is not None else GPU_DENSE,
                calls=None,
                times_ms={f: round(t, 5) for f, t in choice.times_ms.items()},
                cached=choice.cached,
                symbol=None if func is None else symbol,
            )
            kernels[key] = (gvar, [relax.const(a) for a in packed.arrays], layer)
        gvar, consts, layer = kernels[key]
        if gvar is None:
            return call
        flat = relax.op.reshape(x, (batch, k)) if len(shape) != 2 else x
        out = relax.call_tir(gvar, [flat, *consts], out_ty=relax.TensorType((batch, n), "float32"))
        return relax.op.reshape(out, (*shape[:-1], n)) if len(shape) != 2 else out

    errors: list[Exception] = []

    def guarded(call: Any, matches: dict) -> Any:  # exceptions crossing TVM's FFI lose their type
        try:
            return rewriter(call, matches)
        except Exception as e:
            errors.append(e)
            return call

    main = rewrite_call(pattern, guarded, mod["main"])
    if errors:
        raise errors[0]
    mod = builder.get()
    mod["main"] = main
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return mod, [layer for _, _, layer in kernels.values()]


# --- the rest of the graph ------------------------------------------------------------------


def elementwise_rule(lanes: int) -> Any:
    """A dlight rule for elementwise functions (TVM's CPU pipeline leaves them serial and
    scalar): fuse the loops, vectorise by ``lanes``, run in parallel when large."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import ScheduleRule, get_extent

    @ScheduleRule.from_callable("Elementwise")
    def rule(func: Any, target: Any, tunable: bool) -> Any:
        sch = s_tir.Schedule(func)
        try:
            blocks = normalize_prim_func(sch)
        except Exception:
            return None
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        try:
            for block in blocks[:-1]:
                sch.compute_inline(block.block_rv)
        except Exception:
            return None
        loops = sch.get_loops(blocks[-1].block_rv)
        if not loops:
            return None
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = get_extent(sch, fused)
        if not isinstance(extent, int):
            return None
        outer = fused
        if extent >= 2 * lanes and extent % lanes == 0:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
        if extent >= PARALLEL_ELEMENTS:
            sch.parallel(outer)
        return sch

    return rule


PARALLEL_ELEMENTS = 1 << 16  # elementwise functions this large run on every core


def relax_pipeline(target: Any, lanes: int, schedule: bool, lift: LiftConstants) -> Any:
    """TVM's default pipeline for ``target``, on CPU plus schedules (``schedule``) for what it
    leaves unscheduled; the weights are lifted out of the code (``lift``) once folded."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    backend = cuda if target.kind.name == "cuda" else cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        rules = (dlight.cpu.GEMV(), dlight.cpu.Reduction(), elementwise_rule(lanes))
        with target:
            passes = [
                *backend.library_dispatch_passes(target),
                *backend.legalize_passes(target),
                *([dlight.ApplyDefaultSchedule(*rules)] if schedule else []),
                lift.pass_(),
                *backend.dataflow_lower_passes(target),
                *backend.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


# --- export, build, run ----------------------------------------------------------------------


def positive_indices(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Rewrite ``select(x, dim, -k)`` to ``select(x, dim, size - k)`` (and negative dims), in place."""
    for node in program.graph.nodes:
        if node.target is torch.ops.aten.select.int:
            x, dim, index = node.args
            shape = x.meta["val"].shape
            dim = dim % len(shape)
            node.update_arg(1, dim)
            if index < 0:
                node.update_arg(2, index + int(shape[dim]))
    program.graph_module.recompile()
    return program


def export_relax(state: State, fix_indices: bool = True) -> Any:
    from tvm.relax.frontend.torch import from_exported_program

    set_eval(state.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(state.module, state.example_inputs)
        if fix_indices:
            positive_indices(program)
        return from_exported_program(program, keep_params_as_input=False)


def weight_digest(weight: np.ndarray) -> bytes:
    """A weight's SHA-256 with its shape and dtype, read in place (no copy: a large model's
    weights are hundreds of MB)."""
    h = hashlib.sha256(f"{weight.dtype}{weight.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(weight)).cast("B"))
    return h.digest()


def parameter_names(state: State) -> dict[bytes, str]:
    """Parameter names by ``weight_digest``: the rewrite sees constants, the report wants names."""
    return {
        weight_digest(p.detach().cpu().numpy()): name
        for name, p in state.module.named_parameters()
        if p.dim() == 2 and p.dtype == torch.float32
    }


def tvm_runtime_libs() -> str:
    """The folder of the TVM runtime libraries (``libtvm_runtime.so``) of the installed package:
    what the worker processes load, with ``tvm_ffi``, instead of the compiler."""
    return str(Path(str(importlib.util.find_spec("tvm").origin)).parent / "lib")  # type: ignore[union-attr]


@BACKENDS.register("tvm")
class TvmBackend:
    """Options: ``kernels=False`` keeps TVM's own (untuned) matmuls; ``fp16`` also tries sparse
    formats with fp16 values (outputs then differ from torch by ~1e-3 relative); ``measure=False``
    picks kernels by rule instead of timing them."""

    name = "tvm"

    def __init__(
        self,
        fix_indices: bool = True,
        kernels: bool = True,
        threshold: float = 0.5,
        fp16: bool = False,
        measure: bool = True,
        cache: Path | None = None,
    ) -> None:
        self.fix_indices = fix_indices
        self.kernels = kernels
        self.threshold = threshold
        self.fp16 = fp16
        self.measure = measure
        self.cache = cache
        self.layers: list[Layer] = []

    def build(
        self, state: State, target: Target, out_dir: Path, device: Device = LOCAL
    ) -> tuple[Path, Runner]:
        try:
            import tvm
        except ImportError:
            raise LoweringError("apache-tvm is not installed; pip install apache-tvm==0.27.0.post1") from None
        if target.name not in TARGETS:
            raise LoweringError(f"backend tvm cannot build for target {target.name!r} yet")
        out_dir.mkdir(parents=True, exist_ok=True)
        tvm_target = TARGETS[target.name](device)
        compiler = COMPILERS[target.name]() if target.name in COMPILERS else None
        on_gpu = tvm_target["kind"] == "cuda"
        try:
            module = export_relax(state, self.fix_indices)
            if self.kernels:
                measure = self.measure
                if on_gpu:  # timed on the GPU when one is reachable, else the cost model
                    from targets.cuda import gpu

                    measure = measure and gpu(device) is not None
                chooser = KernelChooser(
                    tvm_target,
                    self.threshold,
                    self.fp16,
                    measure,
                    self.cache,
                    device=device,
                    compiler=compiler,
                )
                module, self.layers = rewrite_matmuls(
                    module, chooser.choose, chooser.build, parameter_names(state)
                )
            target_obj = tvm.target.Target(tvm_target)
            lift = LiftConstants()
            schedule = self.kernels and not on_gpu
            pipeline = relax_pipeline(target_obj, vector_lanes(tvm_target), schedule, lift)
            executable = tvm.compile(module, target=target_obj, relax_pipeline=pipeline)
            del module  # the weights live on in ``lift`` until they are on disk
            lift.save(out_dir)
            count_calls(executable, self.layers)
            path = out_dir / "model.so"
            executable.export_library(str(path), fcompile=compiler, fpack_imports=pack_imports)
            if on_gpu:
                from targets.cuda import compile_binaries, cuda_sources

                sources = cuda_sources(executable.mod)
                (out_dir / "model.cu").write_text("\n".join(sources))
                compile_binaries(sources, out_dir, tvm_target)
        except (LoweringError, DeviceError):
            raise
        except Exception as e:
            raise LoweringError(
                f"TVM lowering failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        runner = load_runner(path, target, device)
        if self.layers:
            runner.layers = [layer.to_json() for layer in self.layers]  # type: ignore[attr-defined]
        return path, runner


def load_runner(path: Path, target: Target, device: Device) -> Runner:
    """Load ``path`` where it runs: here, on the RPC device, or (no GPU) nowhere."""
    if target.device_type == "cuda":
        from targets.cuda import gpu, no_gpu

        if gpu(device) is None:
            return Unavailable(no_gpu(device, "tvm"))
        if device.session is None:
            install_cuda_binaries(path.parent)
    if device.session is None:
        return LocalRunner("tvm", path, target.device_type, set_threads(), tvm_runtime_libs())
    return RemoteTvmRunner(device, path, target.machine, target.device_type)
