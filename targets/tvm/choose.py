"""Choosing a kernel per weight: every candidate of the device's policy timed on the device
(this host, or a remote one over RPC), the fastest kept, decisions cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.paths import cache_root
from targets.remote import LOCAL, Device, load_library
from targets.tvm.cpu import CPU_KERNELS
from targets.tvm.devices import Kernels, set_threads
from targets.tvm.kernels import Format, Packed, pack

ROUNDS = 7  # turns of timing per candidate kernel
SHARED_DENSITY = 0.02
"""Weights of one shape (and batch, and candidates) whose densities round to the same multiple
of this share one decision: the kernels' speed follows the number of nonzeros, not which ones,
and a transformer's dozens of same-shape weights, pruned to one sparsity, then cost one timing."""
CACHE_VERSION = 8  # bump when the kernels change: cached timings are of the old ones


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
    ``kernels`` is the device family's policy: the candidates, the rule used with
    ``measure=False`` (nothing timed; reported as such), how each is built. Decisions are cached
    per target, device kind, thread count, shape, batch and sparsity pattern, and shared by the
    weights of one shape and a density within ``SHARED_DENSITY`` (``Choice.cached`` then too).
    """

    def __init__(
        self,
        target: dict[str, Any],
        kernels: Kernels = CPU_KERNELS,
        threshold: float = 0.5,
        fp16: bool = False,
        measure: bool = True,
        cache: Path | None = None,
        timer: Callable[[list[tuple[Any, Packed]], int], list[float]] | None = None,
        device: Device = LOCAL,
        compiler: Any = None,
    ) -> None:
        self.target = target
        self.kernels = kernels
        self.threshold = threshold
        self.fp16 = fp16
        self.measure = measure
        self.cache_path = cache if cache is not None else default_cache()
        self.device = device
        self.compiler = compiler
        self.timer = timer or self._time
        self._cache = self._load_cache()

    def choose(self, weight: np.ndarray, batch: int) -> Choice:
        formats = self.kernels.candidates(weight, batch, self.threshold, self.fp16)
        if not self.measure:
            return Choice(self.kernels.rule(weight, batch, self.threshold, self.fp16))
        names = [f.name for f in formats]

        def time() -> list[float]:
            return self.timer(
                [self.kernels.timed(pack(weight, f), batch, self.target) for f in formats], batch
            )

        return self._fastest(self._keys(weight, batch, names), formats, time)

    def choose_kernel(
        self,
        weight: np.ndarray,
        batch: int,
        kind: str,
        candidates: list[Format],
        make: Callable[[Format], tuple[Any, list[np.ndarray]]],
    ) -> Choice:
        """The fastest of ``candidates`` for a layer kernel other than the matmul (``kind`` names
        it and its sizes, e.g. ``lstm-64``): ``make(fmt)`` gives its TIR function and arguments
        (outputs last). Without timing, the first candidate. Cached like the matmuls' choices."""
        if not self.measure:
            return Choice(candidates[0])
        keys = self._keys(weight, batch, [kind, *(f.name for f in candidates)])
        return self._fastest(keys, candidates, lambda: self.time_calls([make(f) for f in candidates]))

    def _fastest(
        self, keys: tuple[str, str], formats: list[Format], time: Callable[[], list[float]]
    ) -> Choice:
        """The cached choice for ``keys`` (this weight's, else one shared with weights like it),
        else the fastest of ``formats`` by ``time()`` (seconds per call of each), cached under both."""
        hit = self._cache.get(keys[0]) or self._cache.get(keys[1])
        if hit is not None:
            fmt = Format(**{**hit["format"], "block": tuple(hit["format"]["block"])})
            return Choice(fmt, hit["times_ms"], cached=True)
        times = {self.label(fmt): t * 1e3 for fmt, t in zip(formats, time(), strict=True)}
        best = min(formats, key=lambda f: times[self.label(f)])
        for key in keys:
            self._cache[key] = {"format": asdict(best), "times_ms": times}
        self._save_cache()
        return Choice(best, times)

    def build(self, packed: Packed, batch: int) -> Any:
        """The TIR function ``rewrite_matmuls`` puts in the model for ``packed`` (None: the
        matmul stays TVM's)."""
        return self.kernels.kernel(packed, batch, self.target)

    def label(self, fmt: Format) -> str:
        return self.kernels.label(fmt)

    def _keys(self, weight: np.ndarray, batch: int, names: list[str]) -> tuple[str, str]:
        """The cache keys of a decision: for this sparsity pattern, and shared by the weights of
        its shape and density (``SHARED_DENSITY``)."""
        threads = set_threads() if self.device.session is None else self.device.info.get("cpus")
        key = [CACHE_VERSION, self.target, self.device.cache_key, threads, batch, list(weight.shape), names]
        own = hashlib.sha256(json.dumps(key).encode())
        own.update(np.packbits(weight != 0).tobytes())
        density = round(np.count_nonzero(weight) / max(weight.size, 1) / SHARED_DENSITY)
        shared = hashlib.sha256(json.dumps([*key, "density", density]).encode())
        return own.hexdigest(), shared.hexdigest()

    def _time(self, kernels: list[tuple[Any, Packed]], batch: int) -> list[float]:
        rng = np.random.default_rng(0)
        calls = []
        for func, packed in kernels:
            n, k = packed.shape
            x = rng.standard_normal((batch, k)).astype(np.float32)
            calls.append((func, [x, *packed.arrays, np.zeros((batch, n), np.float32)]))
        return self.time_calls(calls)

    def time_calls(self, calls: list[tuple[Any, list[np.ndarray]]]) -> list[float]:
        """Seconds per call of each TIR function on its arguments, on the device."""
        import tvm

        funcs = {f"k{i}": func.with_attr("global_symbol", f"k{i}") for i, (func, _) in enumerate(calls)}
        lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(self.target))
        if self.device.session is None:
            set_threads()
            module, dev = lib.mod, tvm.device(self.kernels.device_type)
        else:
            host = self.target.get("host", self.target)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "kernels.so"
                lib.export_library(str(path), fcompile=self.compiler)
                self.kernels.finish(lib.mod, path.parent, self.target)
                module = load_library(self.device, path, str(host["mtriple"]).split("-")[0])
            dev = self.device.session.device(self.kernels.device_type)
        # the candidates take turns, one repeat each per round: a change of the machine's speed
        # while they are timed (shared machines drift by 1.4x) then weighs on all of them alike
        samples: list[list[float]] = [[] for _ in calls]
        with self.device.errors("timing the candidate kernels"):
            args = [[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays] for _, arrays in calls]
            timers = [module.time_evaluator(f"k{i}", dev, min_repeat_ms=10) for i in range(len(calls))]
            for _ in range(ROUNDS):
                for timer, arguments, times in zip(timers, args, samples, strict=True):
                    times.append(float(timer(*arguments).mean))
        return [float(np.median(times)) for times in samples]

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
