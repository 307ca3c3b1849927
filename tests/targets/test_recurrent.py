"""LSTM and GRU layers through our fused kernel: the kernel against torch, and the rewrite of the
layers ``torch.export`` unrolls (stacked, bidirectional, batch first, a given initial state, the
last state returned, one step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor import State
from targets.base import Compiled
from targets.cpu import CPU
from targets.tvm import TvmBackend, host_target, set_threads
from targets.tvm.kernels import Format, pack

pytest.importorskip("tvm", reason="apache-tvm is not installed")


def prune(weight: torch.Tensor, sparsity: float) -> None:
    with torch.no_grad():
        weight[weight.abs() <= weight.abs().flatten().kthvalue(int(sparsity * weight.numel())).values] = 0


@pytest.mark.parametrize(
    "fmt", [Format("bsr", (1, 1), 4), Format("bsr", (1, 1), 8, parallel=False), Format("dense", unroll=1)]
)
@pytest.mark.parametrize("hidden", [16, 20])  # vectors of 8 hidden units; 20: one at a time
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_kernel_matches_torch(fmt: Format, hidden: int, cell: str) -> None:
    check_kernel(fmt, hidden, cell, lanes=8)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_kernel_in_blocks_of_a_vector_matches_torch(lanes: int, parallel: bool, cell: str) -> None:
    """W_hh in blocks of ``lanes`` rows by one column, the group's gate sums one vector; its first
    block row has no block at all (the first group's first gate: the bias alone)."""
    check_kernel(Format("bsr", (lanes, 1), 4, parallel=parallel), 32, cell, lanes, 0.9, empty=lanes)


def test_recurrent_kernel_refuses_blocks_that_are_not_its_vectors() -> None:
    from targets.tvm.kernels.recurrent_cpu import recurrent_kernel

    weight = np.random.default_rng(0).standard_normal((80, 20)).astype(np.float32)
    with pytest.raises(ValueError, match="dense, CSR or in 1x1 blocks, not bsr8x1-u4"):
        recurrent_kernel(pack(weight, Format("bsr", (8, 1), 4)), 3, 1, 8, "lstm")  # 20 units: no vectors


def check_kernel(
    fmt: Format, hidden: int, cell: str, lanes: int, sparsity: float = 0.8, empty: int = 0
) -> None:
    import tvm

    from targets.tvm.kernels.recurrent_cpu import recurrent_kernel, weight_arrays

    set_threads()  # the parallel kernels' steps on every core, each step's barrier exercised
    torch.manual_seed(0)
    layer = (nn.LSTM if cell == "lstm" else nn.GRU)(7, hidden).eval()
    prune(layer.weight_hh_l0, sparsity)
    with torch.no_grad():
        layer.weight_hh_l0[:empty] = 0
    steps, batch = 9, 3
    x, h0, c0 = torch.randn(steps, batch, 7), torch.randn(1, batch, hidden), torch.randn(1, batch, hidden)
    with torch.no_grad():
        expected, last = layer(x, (h0, c0) if cell == "lstm" else h0)
        xp = x @ layer.weight_ih_l0.T + layer.bias_ih_l0
    packed = pack(layer.weight_hh_l0.detach().numpy(), fmt)
    func = recurrent_kernel(packed, steps, batch, lanes, cell)
    lib = tvm.compile(func, target=tvm.target.Target(host_target()))
    state = [t.detach().numpy() for t in (xp, layer.bias_hh_l0, h0[0], c0[0])]
    if cell == "gru":
        state[-1] = np.zeros(1, np.float32)  # no cell state: a placeholder
    inputs = [state[0], *weight_arrays(packed), *state[1:]]
    outputs = [np.zeros((steps, batch, hidden), np.float32), np.zeros(state[-1].shape, np.float32)]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in (*inputs, *outputs)]
    lib(*args)
    hs = args[-2].numpy()
    np.testing.assert_allclose(hs, expected.numpy(), atol=2e-6)
    if cell == "lstm":
        np.testing.assert_allclose(args[-1].numpy(), last[1][0].numpy(), atol=2e-6)
    assert np.abs(hs).max() > 0.1  # the outputs are not all squashed to zero


class Stacked(nn.Module):
    """LSTM or GRU layers, batch first, from a given state, returning every output."""

    def __init__(self, cell: str, layers: int = 2, bidirectional: bool = True) -> None:
        super().__init__()
        kind = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = kind(6, 16, num_layers=layers, bidirectional=bidirectional, batch_first=True)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, last = self.rnn(x, state if len(state) == 2 else state[0])
        return (out, *last) if isinstance(last, tuple) else (out, last)


def state_for(cell: str, module: Stacked, steps: int, batch: int = 2) -> State:
    torch.manual_seed(1)
    for name, p in module.rnn.named_parameters():
        if name.startswith("weight_hh"):
            prune(p, 0.8)
    layers = module.rnn.num_layers * (2 if module.rnn.bidirectional else 1)
    states = [torch.randn(layers, batch, 16) for _ in range(2 if cell == "lstm" else 1)]
    return State(module=module.eval(), example_inputs=(torch.randn(batch, steps, 6), *states))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_each_recurrent_layer_becomes_one_call_of_our_kernel(tmp_path: Path, cell: str) -> None:
    torch.manual_seed(0)
    state = state_for(cell, Stacked(cell), steps=9)
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    recurrent = [layer for layer in runner.layers if "weight_hh" in layer["name"]]
    expected = {f"rnn.weight_hh_l{i}{s}" for i in (0, 1) for s in ("", "_reverse")}
    assert {layer["name"] for layer in recurrent} == expected and len(recurrent) == 4
    for layer in recurrent:  # one call per layer and direction, W_hh as CSR
        assert layer["format"].startswith(f"{cell}-layer+csr-") and layer["calls"] == 1
        assert layer["batch"] == 2
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_single_step_from_a_given_state_returns_the_kernels_state(tmp_path: Path, cell: str) -> None:
    """One step per call (a language model generating): an LSTM's new ``c`` is computed before
    the step's ``h``, and must come from the kernel too, or the unrolled step would still run."""
    state = state_for(cell, Stacked(cell, layers=1, bidirectional=False), steps=1, batch=1)
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    recurrent = [layer for layer in runner.layers if layer["name"] == "rnn.weight_hh_l0"]
    assert len(recurrent) == 1 and recurrent[0]["format"].startswith(f"{cell}-layer+")
    assert recurrent[0]["calls"] == 1
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
