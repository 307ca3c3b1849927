"""The training passes: masks hold through every step, schedules act, results are reproducible."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor import ConfigError, PassContext, State
from passes import DSD, AGPPrune, GradualPrune, IterativePrune, MagnitudePrune, Retrain, Sensitivity
from passes.gradual_prune import NarangHook
from passes.iterative_prune import DropoutRescaler


def _pruned(state: State, sparsity: float = 0.7) -> State:
    return MagnitudePrune(sparsity=sparsity).apply(state, PassContext()).state


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3, "lr": 0.1},
        {"optimizer": "adam", "weight_decay": 1e-3, "lr": 1e-2},
        {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1, "clip_grad_norm": 0.5, "lr_schedule": "cosine"},
    ],
)
def test_masked_weights_stay_zero_in_every_step(tiny_state: State, settings: dict) -> None:
    state = _pruned(tiny_state)
    seen = []

    def check(module: nn.Module, args: tuple) -> None:
        for fqn, mask in state.masks.items():
            seen.append(bool((module.get_parameter(fqn)[~mask] == 0).all()))

    retrain = Retrain(epochs=3, batch_size=32, **settings)
    module = state.module
    handle = module.register_forward_pre_hook(check)
    out = retrain.apply(state.replace(module=module), PassContext()).state
    handle.remove()
    assert len(seen) >= 3 * 16 * 3 and all(seen)  # every forward of every step, every layer
    for fqn, mask in state.masks.items():
        assert (out.module.get_parameter(fqn)[~mask] == 0).all()
        assert torch.equal(out.masks[fqn], mask)
        changed = out.module.get_parameter(fqn)[mask] != tiny_state.module.get_parameter(fqn)[mask]
        assert changed.float().mean() > 0.5  # the survivors did train


def test_retraining_recovers_and_is_reproducible(tiny_state: State) -> None:
    trained = Retrain(epochs=5, lr=3e-3).apply(tiny_state, PassContext()).state
    pruned = _pruned(trained, 0.9)
    runs = [Retrain(epochs=8, lr=3e-3).apply(pruned, PassContext(seed=3)).state for _ in range(2)]
    for a, b in zip(runs[0].module.parameters(), runs[1].module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trained.evaluate() > 70 and runs[0].evaluate() > pruned.evaluate() + 8


def test_training_needs_a_task(tiny_state: State) -> None:
    with pytest.raises(ConfigError, match="needs data: give --data"):
        Retrain().apply(tiny_state.replace(task=None), PassContext())


@pytest.mark.parametrize("revive", [True, False])
def test_gradual_prune_reaches_the_requested_sparsity(tiny_state: State, revive: bool) -> None:
    spec = GradualPrune(sparsity=0.9, epochs=6, lr=3e-3, freq=4, revive=revive)
    result = spec.apply(tiny_state, PassContext())
    sparsities = result.changes["layer_sparsity"]
    assert sparsities == pytest.approx({"fc1.weight": 0.9, "fc2.weight": 0.9, "fc3.weight": 0.9}, abs=2e-3)
    trace = result.changes["plots"][0]["twin"]["series"]["sparsity"][1]
    assert trace[0] < 0.2 and trace[-1] == pytest.approx(0.9, abs=2e-3)  # from dense to the target
    if not revive:
        assert trace == sorted(trace)  # hard masks only ever grow (with revival they may shrink)
    # 8 batches x 6 epochs = 48 steps: pruning from 0, ramping at 30%, ending at 75%.
    assert result.changes["iterations"] == {"start_itr": 0, "ramp_itr": 14, "end_itr": 36}


def test_gradual_prune_paper_heuristic_prunes_about_ninety_percent(tiny_state: State) -> None:
    result = GradualPrune(epochs=6, lr=1e-3, freq=2, revive=False).apply(tiny_state, PassContext())
    reached = list(result.changes["layer_sparsity"].values())
    assert all(0.75 < s < 0.97 for s in reached), reached


def test_narang_revival() -> None:
    """With revive, a pruned weight that grows past ε is unmasked; without, it stays pruned."""
    for revive, expected in ((True, [True, True, True, True]), (False, [False, True, True, True])):
        w = nn.Parameter(torch.tensor([[0.01, 3.0, 4.0, 5.0]]))
        spec = GradualPrune(start_slope=0.5, ramp_slope=0.5, freq=1, revive=revive)
        hook = NarangHook(spec, ("w",), (0, 1, 4), {})
        masks = {"w": torch.ones(1, 4, dtype=torch.bool)}
        assert hook.update(0, {"w": w}, masks) and masks["w"].tolist() == [[False, True, True, True]]
        with torch.no_grad():
            w[0, 0] = 5.0  # the dense weight grew back past the threshold
        hook.update(1, {"w": w}, masks)
        assert masks["w"][0].tolist() == expected


def test_agp_follows_its_schedule_with_blocks(tiny_state: State) -> None:
    result = AGPPrune(sparsity=0.75, epochs=4, freq=2, granularity="4x1", lr=3e-3).apply(
        tiny_state, PassContext()
    )
    (plot,) = result.changes["plots"]
    steps, reached = plot["series"]["reached"]
    scheduled = dict(zip(*plot["series"]["scheduled"], strict=True))
    for step, value in zip(steps, reached, strict=True):
        assert value == pytest.approx(scheduled[step], abs=0.02)
    fc2 = result.state.masks["fc2.weight"]
    assert (fc2.reshape(25, 4, 300).all(1) | ~fc2.reshape(25, 4, 300).any(1)).all()  # 4x1 blocks


def test_iterative_prune_cycles_and_dropout(tiny_task) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    state = State(module=module, example_inputs=(torch.rand(1, 64),), task=tiny_task)
    result = IterativePrune(sparsity=0.875, cycles=3, epochs=2, lr=3e-3).apply(state, PassContext())
    cycles = result.changes["cycles"]
    assert [c["sparsity"] for c in cycles] == pytest.approx([0.5, 0.75, 0.875], abs=0.01)
    # D_r = D_o sqrt(C_r / C_o) for the dropout feeding layer "3".
    kept = float(result.state.masks["3.weight"].float().mean())
    assert cycles[-1]["dropout"]["3.weight"] == pytest.approx(0.5 * kept**0.5, rel=1e-3)
    assert result.state.module[2].p == pytest.approx(cycles[-1]["dropout"]["3.weight"])


def test_dropout_rescaler_pairs_each_dropout_with_the_next_layer() -> None:
    module = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 4), nn.Dropout(0.4), nn.Linear(4, 2))
    pairs = [(d.p, fqn) for d, fqn, _, _ in DropoutRescaler(module).pairs]
    assert pairs == [(0.2, "1.weight"), (0.4, "3.weight")]


def test_dsd_returns_a_dense_model_and_keeps_earlier_masks(tiny_state: State) -> None:
    earlier = MagnitudePrune(sparsity=0.5, layers=("fc3.*",)).apply(tiny_state, PassContext()).state
    result = DSD(sparsity=0.5, epochs=3, lr=3e-3).apply(earlier, PassContext())
    out = result.state
    assert set(out.masks) == {"fc3.weight"} and torch.equal(
        out.masks["fc3.weight"], earlier.masks["fc3.weight"]
    )
    assert float((out.module.fc1.weight == 0).float().mean()) < 0.05  # re-densified
    assert set(result.changes["training"]) == {"sparse", "redense"}


def test_sensitivity_table_and_chosen_sparsities(tiny_task) -> None:
    """A robust layer and a sensitive one: the first carries the input through a few large
    weights (on the diagonal) among many tiny ones, the second is the task's teacher itself,
    every weight of which matters."""
    teacher = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))  # tiny_task's teacher
    module = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 4, bias=False))
    with torch.no_grad():
        module[0].weight.copy_(torch.eye(64) + 1e-4 * torch.randn(64, 64))
        module[1].weight.copy_(teacher.T)
    state = State(module=module, example_inputs=(torch.rand(1, 64),), task=tiny_task)
    result = Sensitivity(sparsities=(0.5, 0.9), max_drop=5.0).apply(state, PassContext())
    table, baseline = result.changes["table"], result.changes["baseline"]
    assert baseline == 100.0 and set(table) == {"0.weight", "1.weight"}
    assert table["0.weight"] == {0.5: 100.0, 0.9: 100.0}  # only the tiny weights went
    assert table["1.weight"][0.9] < 80.0  # most of the teacher gone
    chosen = result.changes["chosen"]
    assert chosen["0.weight"] == 0.9 and chosen["1.weight"] < 0.9
    kept = result.state.masks["0.weight"]
    assert float(kept.float().mean()) == pytest.approx(0.1, abs=1e-3) and bool(kept.diagonal().all())
    unchanged = Sensitivity(sparsities=(0.5,)).apply(state, PassContext()).state
    torch.testing.assert_close(unchanged.module[0].weight, state.module[0].weight)
