"""Schedules for what the kernels leave to TVM, and the Relax pipeline: TVM's default one for the
target, with (on CPUs) vectorisable elementwise math (``fastmath``), dlight's rules and ours for
the functions it leaves unscheduled, and the weights lifted out of the code once folded
(``params``)."""

from __future__ import annotations

from typing import Any

from targets.tvm.fastmath import fast_math_pass
from targets.tvm.params import LiftConstants


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
                *([fast_math_pass()] if schedule else []),
                *backend.library_dispatch_passes(target),
                *backend.legalize_passes(target),
                *([dlight.ApplyDefaultSchedule(*rules)] if schedule else []),
                lift.pass_(),
                *backend.dataflow_lower_passes(target),
                *backend.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
