"""The model checks: non-finite outputs and outputs that no longer depend on the input are
caught at load, after every pass and in verification, never reported as verified."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from compressor import ModelLoadError, PassContext, PassError, PassResult, Pipeline, State, VerificationError
from compressor.inputs import input_ranges, trial_inputs
from passes import MagnitudePrune
from targets.runtime.check import compare
from targets.verify import verify


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


@dataclass(frozen=True)
class Poke:
    """A pass that writes ``value`` into one weight (as a diverged step would)."""

    name: ClassVar[str] = "poke"
    fqn: str = "2.weight"
    value: float = float("nan")
    everywhere: bool = False

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        weight = state.module.get_parameter(self.fqn)
        with torch.no_grad():
            if self.everywhere:
                weight.fill_(self.value)
            else:
                weight[0, 0] = self.value
        return PassResult(state)


def test_a_pass_that_diverges_is_named() -> None:
    state = State(module=mlp(), example_inputs=(torch.randn(1, 8),))
    with pytest.raises(PassError, match=r"pass 'poke' broke the model after \[magnitude-prune\].*not finite"):
        Pipeline([MagnitudePrune(sparsity=0.5), Poke()]).run(state)
    with pytest.raises(PassError, match=r"parameter 2\.weight holds inf"):
        Pipeline([Poke(value=float("inf"))]).run(state)


def test_a_layer_pruned_away_is_named() -> None:
    state = State(module=mlp(), example_inputs=(torch.randn(1, 8),))
    with pytest.raises(
        PassError, match=r"output 0 no longer depends on the input \(2\.weight is 100% zero\)"
    ):
        Pipeline([Poke(value=0.0, everywhere=True)]).run(state)


def test_a_dead_layer_is_found_when_no_weight_is_zero() -> None:
    """Every ReLU input pushed below zero: all weights nonzero, the output constant."""
    state = State(module=mlp(), example_inputs=(torch.randn(1, 8),))
    with pytest.raises(PassError, match=r"layer 1 returns the same output for different inputs"):
        Pipeline([Poke(fqn="0.bias", value=-100.0, everywhere=True)]).run(state)


def test_a_model_that_overflows_on_fresh_inputs_is_the_models_fault() -> None:
    """log(x): finite on its positive example, NaN on the random inputs; not a lowering bug."""

    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    state = State(module=Log(), example_inputs=(torch.rand(1, 4) + 0.5,))
    with pytest.raises(ModelLoadError, match=r"output 0 is not finite on random input #1"):
        Pipeline([]).run(state)
    with pytest.raises(ModelLoadError, match=r"output 0 is not finite on random input #1.*fix the model"):
        verify(lambda cases: [[np.log(xs[0])] for xs in cases], state)


def test_an_artifact_returning_nan_fails_verification() -> None:
    state = State(module=mlp(), example_inputs=(torch.randn(1, 8),))

    def right(xs: list[np.ndarray]) -> list[np.ndarray]:
        return [state.module(torch.from_numpy(xs[0])).detach().numpy()]

    def broken(xs: list[np.ndarray]) -> list[np.ndarray]:
        out = right(xs)[0].copy()
        out[0, 1] = np.nan
        return [out]

    assert verify(lambda cases: [right(c) for c in cases], state).trials == 4
    with pytest.raises(VerificationError, match=r"artifact output 0 holds NaN .* on its example input"):
        verify(lambda cases: [broken(c) for c in cases], state)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_never_passes_a_non_finite_value(bad: float) -> None:
    want = np.ones((2, 3), np.float32)
    have = want.copy()
    have[1, 2] = bad
    error, _, problem = compare([want], [have], 1e-4, 1e-4)
    assert problem and "holds" in problem and error == float("inf")
    reference = want.copy()
    reference[0, 0] = bad  # an inf in the reference made every tolerance pass
    _, _, problem = compare([reference], [reference.copy()], 1e-4, 1e-4)
    assert problem == "the torch model's output 0 is not finite"


def test_token_inputs_cover_the_vocabulary_and_states_are_random() -> None:
    class StepLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 4)
            self.rnn = nn.GRU(4, 6, batch_first=True)

        def forward(self, ids: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.embed(ids), h)
            return out * mask[..., None]

    example = (
        torch.zeros(1, 64, dtype=torch.long),
        torch.zeros(1, 1, 6),
        torch.ones(1, 64, dtype=torch.long),
    )
    assert input_ranges(StepLM(), example) == [(0, 50), None, (1, 2)]
    trials = trial_inputs(StepLM(), example, trials=3)
    ids = torch.cat([t[0] for t in trials[1:]])
    assert int(ids.min()) >= 0 and int(ids.max()) <= 49 and len(ids.unique()) > 40  # not just token 0
    assert all(bool(t[1].abs().sum() > 0) for t in trials[1:])  # the state is not left at zero
    assert all(bool((t[2] == 1).all()) for t in trials)  # a mask keeps its values


def test_a_retraining_that_diverges_is_named(tiny_task) -> None:
    """SGD at an absurd learning rate: the weights blow up to inf and the outputs to NaN."""
    from passes import Retrain

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    state = State(module=module, example_inputs=(torch.randn(1, 64),), task=tiny_task)
    with pytest.raises(PassError, match=r"pass 'retrain' broke the model .*not finite.*holds (NaN|inf)"):
        Pipeline([Retrain(steps=20, lr=1e12, optimizer="sgd", keep_best=False)]).run(state)
