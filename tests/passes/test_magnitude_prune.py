from __future__ import annotations

import pytest
import torch

from compressor import ConfigError, PassContext, State
from passes import MagnitudePrune


def _weights(state: State) -> dict[str, torch.Tensor]:
    return {n: p for n, p in state.module.named_parameters() if p.dim() >= 2}


def test_global_prunes_the_smallest_weights_overall(lenet_state: State) -> None:
    out = MagnitudePrune(sparsity=0.7).apply(lenet_state, PassContext()).state
    weights = _weights(out)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.7 * total)
    assert max(float((w == 0).float().mean()) for w in weights.values()) < 0.99  # no layer at the cap
    kept_min = min(float(w.detach()[w != 0].abs().min()) for w in weights.values() if w.count_nonzero())
    pruned_max = max(
        float(lenet_state.module.get_parameter(n).detach()[~out.masks[n]].abs().max()) for n in weights
    )
    assert pruned_max <= kept_min  # every pruned |w| is below every kept one
    for name, w in weights.items():
        assert torch.equal(w != 0, out.masks[name])


def test_global_pruning_caps_each_layer_and_spreads_the_rest() -> None:
    """A layer of small weights would be pruned whole by one global ranking (the model would
    return its bias for every input); it stops at 99% and the others take the remainder."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    with torch.no_grad():
        module[2].weight.mul_(1e-3)  # all below every weight of the first layer
    state = State(module=module, example_inputs=(torch.randn(1, 64),))
    out = MagnitudePrune(sparsity=0.9).apply(state, PassContext()).state
    head, first = out.module[2].weight, out.module[0].weight
    assert int(head.count_nonzero()) == 2560 - int(0.99 * 2560)  # 26 of 2560 stay: 99%, not 100%
    assert int((head == 0).sum() + (first == 0).sum()) == round(0.9 * (2560 + 64 * 256))
    kept = state.module[2].weight.detach().abs()[out.masks["2.weight"]]
    assert float(kept.min()) >= float(state.module[2].weight.detach().abs()[~out.masks["2.weight"]].max())


def test_layer_scope_and_overrides(lenet_state: State) -> None:
    prune = MagnitudePrune(sparsity=0.8, scope="layer", sparsities={"fc3.*": 0.25})
    out = prune.apply(lenet_state, PassContext())
    assert out.changes["layer_sparsity"] == pytest.approx(
        {"fc1.weight": 0.8, "fc2.weight": 0.8, "fc3.weight": 0.25}, abs=1e-3
    )


def test_biases_are_never_pruned(lstm_state: State) -> None:
    out = MagnitudePrune(sparsity=0.95).apply(lstm_state, PassContext()).state
    for name, p in out.module.named_parameters():
        if p.dim() == 1:
            torch.testing.assert_close(p, lstm_state.module.get_parameter(name))
    assert set(out.masks) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight"}


def test_layers_restricts_and_existing_masks_stay(lenet_state: State) -> None:
    first = MagnitudePrune(sparsity=0.5, layers=("fc2.*",)).apply(lenet_state, PassContext()).state
    assert set(first.masks) == {"fc2.weight"}
    second = MagnitudePrune(sparsity=0.3, scope="layer").apply(first, PassContext()).state
    # fc2 was already at 50%: a lower target never revives its pruned weights.
    assert torch.all(second.masks["fc2.weight"] <= first.masks["fc2.weight"])
    assert float((~second.masks["fc2.weight"]).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert float((~second.masks["fc1.weight"]).float().mean()) == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, "0.5", True])
def test_bad_sparsity(sparsity) -> None:
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        MagnitudePrune(sparsity=sparsity)


def test_no_matching_layers(lenet_state: State) -> None:
    with pytest.raises(ConfigError, match="no prunable weights match"):
        MagnitudePrune(layers=("conv*",)).apply(lenet_state, PassContext())
