"""``--tune``: MetaSchedule tuning of what our kernels leave to TVM, with a persistent database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import State
from targets.base import Compiled
from targets.cpu import CPU
from targets.tvm import TvmBackend, host_target, tune
from targets.tvm.tune import tune_cache, workload_key


class Pooled(nn.Module):
    """A convolution (our kernel) and what stays TVM's: a max-pool, an average over the plane."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return y.mean(dim=(2, 3))


def schedules(cache: Path) -> dict[str, str]:
    return json.loads(cache.read_text()) if cache.exists() else {}


@pytest.mark.slow
def test_tuned_build_verifies_and_a_second_build_tunes_nothing(tmp_path: Path, monkeypatch) -> None:
    tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed")
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    state = State(module=Pooled().eval(), example_inputs=(torch.randn(1, 3, 16, 16),))
    cache = tune_cache(host_target())
    artifact, runner = TvmBackend(tune=48, measure=False).build(state, CPU, tmp_path / "first")
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
    tuned = schedules(cache)
    assert tuned  # the pool and the mean were tasks; our convolution was not
    assert all("w_offsets" not in script for script in tuned.values())
    assert all("T.parallel" in script or "T.vectorized" in script for script in tuned.values())

    # the second build finds each of its functions' workloads in the cache (the hashes hold
    # from one build to the next) and tunes none of them again
    matched: list[int] = []

    def apply(mod, schedules):
        functions = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        matched.append(sum(workload_key(f) in schedules for f in functions))
        return real(mod, schedules)

    real = tune.apply_schedules
    monkeypatch.setattr(tune, "apply_schedules", apply)
    before = cache.stat().st_mtime_ns
    artifact, runner = TvmBackend(tune=48, measure=False).build(state, CPU, tmp_path / "second")
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
    assert cache.stat().st_mtime_ns == before  # every task had a schedule: nothing tuned again
    assert matched == [len(tuned)]
