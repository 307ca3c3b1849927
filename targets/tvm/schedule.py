"""Schedules for what the kernels leave to TVM, and the Relax pipeline: TVM's default one for the
target, with (on CPUs) vectorisable elementwise math (``fastmath``), dlight's rules and ours for
the functions it leaves unscheduled, and the weights lifted out of the code once folded
(``params``)."""

from __future__ import annotations

import math
from typing import Any

from targets.tvm.fastmath import fast_math_pass
from targets.tvm.params import LiftConstants


def normalized(func: Any) -> tuple[Any, list[Any]]:
    """A schedule of ``func`` and dlight's view of its blocks (none when it cannot read them)."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    sch = s_tir.Schedule(func)
    try:
        return sch, normalize_prim_func(sch) or []
    except Exception:
        return sch, []


def elementwise_rule(lanes: int) -> Any:
    """A dlight rule for elementwise functions (TVM's CPU pipeline leaves them serial and
    scalar): the innermost loop vectorised by ``lanes``, the outer ones fused and run in
    parallel when the function is large."""
    from tvm.s_tir.dlight.base import ScheduleRule, get_extent

    @ScheduleRule.from_callable("Elementwise")
    def rule(func: Any, target: Any, tunable: bool) -> Any:
        sch, blocks = normalized(func)
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        try:
            for block in blocks[:-1]:
                sch.compute_inline(block.block_rv)
        except Exception:
            return None
        loops = sch.get_loops(blocks[-1].block_rv)
        extents = [get_extent(sch, loop) for loop in loops]
        if not loops or not all(isinstance(e, int) for e in extents):
            return None
        # The innermost loop (with the one outside it while it is shorter than a vector) stays a
        # loop of its own, vectorised by ``lanes`` when they divide it (else by LLVM): fusing
        # every loop into one made each lane decode its broadcast indices by division.
        inner = len(loops) - 1
        while inner > 0 and math.prod(extents[inner:]) < lanes:
            inner -= 1
        total = math.prod(extents)
        width = math.prod(extents[inner:])
        body = sch.fuse(*loops[inner:]) if len(loops) - inner > 1 else loops[inner]
        if width >= 2 * lanes and width % lanes == 0:
            _, vector = sch.split(body, [None, lanes])
            sch.vectorize(vector)
        if inner > 0 and total >= PARALLEL_ELEMENTS:
            outer = sch.fuse(*loops[:inner]) if inner > 1 else loops[0]
            sch.parallel(outer)
        elif inner == 0 and total >= PARALLEL_ELEMENTS:
            outer, _ = sch.split(sch.get_loops(blocks[-1].block_rv)[0], [PARALLEL_CHUNKS, None])
            sch.parallel(outer)
        return sch

    return rule


PARALLEL_ELEMENTS = 1 << 16  # elementwise functions this large run on every core
PARALLEL_CHUNKS = 64  # the parallel items of a one-loop elementwise function


WINDOW = 64  # reduction points per output at most for a window's reduction (pooling)


def window_rule() -> Any:
    """A dlight rule for a reduction over a small window of each output (max and average
    pooling, a global average over a 7x7 map), which TVM's CPU pipeline leaves serial (ResNet-18's
    3x3 max-pool took 0.88 ms, 0.22 ms so): the padding before it inlined, the outputs' loops
    fused and run in parallel (but the innermost, when it is a vector long) with the window's
    loops unrolled, and what follows it (an average's division) computed in the same loop."""
    from tvm.s_tir.dlight.base import ScheduleRule

    @ScheduleRule.from_callable("Window")
    def rule(func: Any, target: Any, tunable: bool) -> Any:
        sch, blocks = normalized(func)
        reductions = [i for i, b in enumerate(blocks) if not b.is_injective()]
        if len(reductions) != 1:
            return None
        window = blocks[reductions[0]]
        kinds, extents = window.dom_kind(), window.dom()
        spatial = len(kinds.rstrip("R"))
        if "R" in kinds[:spatial] or not all(isinstance(e, int) for e in extents):
            return None  # not the outputs' loops then the window's
        if math.prod(extents[spatial:]) > WINDOW:
            return None
        try:
            for block in blocks[: reductions[0]]:
                sch.compute_inline(block.block_rv)
            loops = sch.get_loops(window.block_rv)
            fused = spatial - 1 if spatial > 1 and extents[spatial - 1] >= 8 else spatial
            outer = sch.fuse(*loops[:fused]) if fused > 1 else loops[0]
            if math.prod(extents) >= PARALLEL_ELEMENTS:
                sch.parallel(outer)
            for loop in loops[spatial:]:
                sch.unroll(loop)
            for block in blocks[reductions[0] + 1 :]:
                sch.reverse_compute_at(block.block_rv, outer)
        except Exception:
            return None
        return sch

    return rule


def relax_pipeline(target: Any, lanes: int, schedule: bool, lift: LiftConstants, tuning: Any = None) -> Any:
    """TVM's default pipeline for ``target``, on CPU plus schedules (``schedule``) for what it
    leaves unscheduled; the weights are lifted out of the code (``lift``) once folded;
    ``tuning``: a pass that tunes and applies MetaSchedule's schedules first (``tune.py``)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    backend = cuda if target.kind.name == "cuda" else cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        rules = (dlight.cpu.GEMV(), window_rule(), dlight.cpu.Reduction(), elementwise_rule(lanes))
        with target:
            passes = [
                *([fast_math_pass(lanes)] if schedule else []),
                *backend.library_dispatch_passes(target),
                *backend.legalize_passes(target),
                *([tuning] if tuning is not None else []),
                *([dlight.ApplyDefaultSchedule(*rules)] if schedule else []),
                lift.pass_(),
                *backend.dataflow_lower_passes(target),
                *backend.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
