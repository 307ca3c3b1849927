from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from compressor import Pass, PassContext, PassError, PassResult, Pipeline, State, load_task
from compressor.errors import ConfigError
from compressor.state import PassRecord
from passes import MagnitudePrune


@dataclass(frozen=True)
class Explode:
    name: ClassVar[str] = "explode"
    error: type[Exception] = RuntimeError

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        raise self.error("boom")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def before_pass(self, name: str, state: State) -> None:
        self.events.append(("before", name))

    def after_pass(self, name: str, state: State, record: PassRecord) -> None:
        self.events.append(("after", name))


def test_pipeline_records_each_pass(lenet_state: State) -> None:
    pipeline = Pipeline([MagnitudePrune(sparsity=0.5), MagnitudePrune(sparsity=0.8)])
    out = pipeline.run(lenet_state)
    assert [r.name for r in out.history] == ["magnitude-prune", "magnitude-prune"]
    first, second = out.history
    assert first.params == second.params == sum(p.numel() for p in lenet_state.module.parameters())
    assert first.nonzeros > second.nonzeros
    assert 0.45 < first.sparsity < 0.5 < 0.75 < second.sparsity < 0.8  # biases stay dense
    assert first.seconds >= 0 and first.metric is None
    assert first.changes["layer_sparsity"].keys() == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_pipeline_records_metric_with_task(tmp_path, lenet_state: State) -> None:
    torch.save(
        {
            k: torch.rand(20, 64) if k[0] == "x" else torch.randint(0, 10, (20,))
            for k in ("x_train", "y_train", "x_val", "y_val")
        },
        tmp_path / "d.pt",
    )
    state = lenet_state.replace(task=load_task(tmp_path / "d.pt"))
    out = Pipeline([MagnitudePrune(sparsity=0.5)]).run(state)
    assert out.history[0].metric == state.task.evaluate(out.module)
    assert 0.0 <= out.history[0].metric <= 100.0


def test_pipeline_is_a_pass_and_nests(lenet_state: State) -> None:
    inner = Pipeline([MagnitudePrune(sparsity=0.5)])
    assert isinstance(inner, Pass)
    out = Pipeline([inner, MagnitudePrune(sparsity=0.9)]).run(lenet_state)
    assert [r.name for r in out.history] == ["magnitude-prune", "pipeline", "magnitude-prune"]


def test_pipeline_leaves_input_state_untouched(lenet_state: State) -> None:
    before = {k: v.clone() for k, v in lenet_state.module.state_dict().items()}
    Pipeline([MagnitudePrune(sparsity=0.9)]).run(lenet_state)
    for k, v in lenet_state.module.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert lenet_state.masks == {}


def test_instruments_see_every_pass(lenet_state: State) -> None:
    recorder = Recorder()
    Pipeline([MagnitudePrune(), MagnitudePrune(sparsity=0.7)]).apply(
        lenet_state, PassContext(instruments=(recorder,))
    )
    assert recorder.events == [("before", "magnitude-prune"), ("after", "magnitude-prune")] * 2


def test_failure_names_the_pass_and_what_ran_before(lenet_state: State) -> None:
    pipeline = Pipeline([MagnitudePrune(), Explode()])
    with pytest.raises(
        PassError, match=r"pass 'explode' failed after \[magnitude-prune\]: RuntimeError: boom"
    ):
        pipeline.run(lenet_state)
    with pytest.raises(ConfigError, match=r"pass 'explode' failed \(first pass\): boom"):
        Pipeline([Explode(ConfigError)]).run(lenet_state)
