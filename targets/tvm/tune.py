"""Opt-in MetaSchedule tuning (``compress --tune TRIALS``) of the functions our kernels leave to
TVM: pooling, reductions, the elementwise ops not fused into a kernel's epilogue.

It runs in the Relax pipeline after TVM's legalisation and fusion, before dlight's default
schedules: each fused function not marked scheduled (ours are) is a task; the tasks the cache has
no schedule for are tuned on this host within a budget of ``TRIALS`` measured candidates in all,
then every function the cache knows takes its best schedule, and dlight schedules the rest as
without ``--tune``. The cache is one JSON file per TVM target and version in
``cache_root()/tvm-tune/``: each workload's structural hash and its best schedule as TVMScript,
so a second build of the model (or of another with the same workloads) tunes nothing.

Candidates are built and timed in this process (``InProcessBuilder``, ``InProcessRunner``), not
in MetaSchedule's worker processes: each of those imports TVM (7 s here) and receives its
function through TVM's JSON serialiser, which crashes with ``apache-tvm-ffi`` 0.1.15; for the
same reason the records live in a ``MemoryDatabase`` and only the winners are written, as text.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from compressor.paths import cache_root

TRIALS_PER_ROUND = 16  # candidates measured per round of the search (MetaSchedule's default: 64)
SCHEDULED = "tirx.is_scheduled"


def tune_cache(target: dict[str, Any]) -> Path:
    """The cache file for ``target`` (a TVM target as a dict) with this version of TVM."""
    import tvm

    key = json.dumps([target, tvm.__version__], sort_keys=True)
    return cache_root() / "tvm-tune" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def workload_key(func: Any) -> str:
    """A PrimFunc's structural hash, whatever symbol it is exported as."""
    import tvm_ffi

    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return str(tvm_ffi.structural_hash(func))


def cost_model() -> str:
    """MetaSchedule's XGBoost cost model where ``xgboost`` is installed, else random search."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def host_intrinsics() -> None:
    """Register only this CPU's tensor intrinsics before MetaSchedule imports
    ``tvm.s_tir.tensor_intrin``, whose ``__init__`` parses every target's (62 s here, CUDA's alone
    41 s) in each process that tunes: the package is entered without running it, then its x86
    (or arm) module imported; another target's module still imports on demand."""
    import importlib
    import importlib.util
    import platform
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    sys.modules[name] = importlib.util.module_from_spec(spec)
    arm = platform.machine().lower() in ("aarch64", "arm64")
    importlib.import_module(f"{name}.{'arm_cpu' if arm else 'x86'}")


def in_process() -> tuple[Any, Any]:
    """A MetaSchedule builder and runner that build and time each candidate in this process."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, local_runner

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for item in build_inputs:
                try:
                    results.append(
                        BuilderResult(default_export(default_build(item.mod, item.target, None)), None)
                    )
                except Exception as error:  # a candidate that does not build is MetaSchedule's to skip
                    results.append(BuilderResult(None, f"build failed: {error}"))
            return results

    @derived_object
    class InProcessRunner(PyRunner):
        def __init__(self) -> None:
            super().__init__()
            self.config = EvaluatorConfig._normalized(EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20))

        def run(self, runner_inputs: list[Any]) -> list[Any]:
            futures = []
            for item in runner_inputs:
                args = tuple(info.as_json() for info in item.args_info)
                try:
                    costs = local_runner._worker_func(
                        None, None, None, self.config, 1, str(item.artifact_path), str(item.device_type), args
                    )
                    futures.append(local_runner.LocalRunnerFuture(res=costs, error_message=None))
                except Exception as error:
                    futures.append(
                        local_runner.LocalRunnerFuture(res=None, error_message=f"run failed: {error}")
                    )
            return futures

    return InProcessBuilder(), InProcessRunner()


def tune_pass(target: Any, trials: int, cache: Path) -> Any:
    """The module pass: tune the untuned tasks of the module with ``trials`` measurements in all,
    then give every unscheduled function the ``cache`` has a schedule for that schedule."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from targets.tvm.devices import set_threads

    # MetaSchedule's rules split parallel loops by the core count the target names
    target = tvm.target.Target({**target.export(), "num-cores": set_threads()})

    @tvm.transform.module_pass(opt_level=0, name="CompressorTune")
    def _tune(mod: Any, _ctx: Any) -> Any:
        try:
            schedules: dict[str, str] = json.loads(cache.read_text())
        except (OSError, ValueError):
            schedules = {}
        tasks = [
            task
            for task in ms.relax_integration.extract_tasks(mod, target)
            if not task.dispatched[0]["main"].attrs.get(SCHEDULED, False)
            and workload_key(task.dispatched[0]["main"]) not in schedules
        ]
        if tasks and trials > 0:
            host_intrinsics()
            database = ms.database.MemoryDatabase()
            builder, runner = in_process()
            with tempfile.TemporaryDirectory() as work_dir:
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    tasks, work_dir, seed=0
                )
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work_dir,
                    max_trials_global=trials,
                    num_trials_per_iter=min(TRIALS_PER_ROUND, trials),
                    builder=builder,
                    runner=runner,
                    database=database,
                    cost_model=cost_model(),
                )
            for task in tasks:
                best = database.query_schedule(task.dispatched[0], target, workload_name="main")
                if best is not None:
                    schedules[workload_key(task.dispatched[0]["main"])] = best.mod["main"].script()
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(schedules))
            tmp.replace(cache)
        return apply_schedules(mod, schedules)

    return _tune


def apply_schedules(mod: Any, schedules: dict[str, str]) -> Any:
    """``mod`` with each unscheduled PrimFunc whose workload ``schedules`` holds replaced by its
    tuned TVMScript (keeping the function's symbol), marked scheduled."""
    import tvm

    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs.get(SCHEDULED, False):
            continue
        script = schedules.get(workload_key(func))
        if script is None:
            continue
        tuned = tvm.script.from_source(script)
        if isinstance(tuned, tvm.IRModule):
            tuned = tuned["main"]
        tuned = tuned.without_attr("global_symbol")
        if "global_symbol" in func.attrs:
            tuned = tuned.with_attr("global_symbol", func.attrs["global_symbol"])
        mod[gvar] = tuned.with_attr(SCHEDULED, True)
    return mod
