"""LSTM layers through our fused kernel: the kernel against torch, and the rewrite of the layers
``torch.export`` unrolls (stacked, bidirectional, batch first, a given initial state, the last
state returned)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor import State
from targets.base import Compiled
from targets.cpu import CPU
from targets.tvm import TvmBackend, host_target
from targets.tvm.kernels import Format, pack

pytest.importorskip("tvm", reason="apache-tvm is not installed")


def prune(weight: torch.Tensor, sparsity: float) -> None:
    with torch.no_grad():
        weight[weight.abs() <= weight.abs().flatten().kthvalue(int(sparsity * weight.numel())).values] = 0


@pytest.mark.parametrize(
    "fmt", [Format("bsr", (1, 1), 4), Format("bsr", (1, 1), 8, parallel=False), Format("dense", unroll=1)]
)
@pytest.mark.parametrize("hidden", [16, 20])  # vectors of 8 hidden units; 20: one at a time
def test_lstm_kernel_matches_torch(fmt: Format, hidden: int) -> None:
    import tvm

    from targets.tvm.kernels.recurrent_cpu import lstm_kernel, weight_arrays

    torch.manual_seed(0)
    lstm = nn.LSTM(7, hidden).eval()
    prune(lstm.weight_hh_l0, 0.8)
    steps, batch = 5, 3
    x, h0, c0 = torch.randn(steps, batch, 7), torch.randn(1, batch, hidden), torch.randn(1, batch, hidden)
    with torch.no_grad():
        expected, (_, c_n) = lstm(x, (h0, c0))
        xp = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0
    packed = pack(lstm.weight_hh_l0.detach().numpy(), fmt)
    lib = tvm.compile(lstm_kernel(packed, steps, batch, 8), target=tvm.target.Target(host_target()))
    state = [t.detach().numpy() for t in (xp, lstm.bias_hh_l0, h0[0], c0[0])]
    inputs = [state[0], *weight_arrays(packed), *state[1:]]
    outputs = [np.zeros((steps, batch, hidden), np.float32), np.zeros((batch, hidden), np.float32)]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in (*inputs, *outputs)]
    lib(*args)
    hs, c = args[-2].numpy(), args[-1].numpy()
    np.testing.assert_allclose(hs, expected.numpy(), atol=2e-6)
    np.testing.assert_allclose(c, c_n[0].numpy(), atol=2e-6)
    assert np.abs(hs).max() > 0.1  # the outputs are not all squashed to zero


class Stacked(nn.Module):
    """Two bidirectional batch-first LSTM layers from a given state, returning every output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, (h, c) = self.lstm(x, (h0, c0))
        return out, h, c


def test_each_lstm_layer_becomes_one_call_of_our_kernel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Stacked().eval()
    for name, p in module.lstm.named_parameters():
        if name.startswith("weight_hh"):
            prune(p, 0.8)
    inputs = (torch.randn(2, 9, 6), torch.randn(4, 2, 16), torch.randn(4, 2, 16))
    state = State(module=module, example_inputs=inputs)
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    layers = {layer["name"]: layer for layer in runner.layers}
    recurrent = [f"lstm.weight_hh_l{i}{s}" for i in (0, 1) for s in ("", "_reverse")]
    for name in recurrent:  # one call per layer and direction, W_hh as CSR
        assert layers[name]["format"].startswith("lstm-layer+csr-") and layers[name]["calls"] == 1
        assert layers[name]["batch"] == 2
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


def test_a_single_step_from_a_given_state_returns_the_kernels_state(tmp_path: Path) -> None:
    """One step per call (a language model generating): the new ``c`` is computed before the
    step's ``h``, and must come from the kernel too, or the unrolled step would still run."""
    torch.manual_seed(0)
    module = Stacked().eval()
    module.lstm = nn.LSTM(6, 16, batch_first=True)
    prune(module.lstm.weight_hh_l0, 0.8)
    state = State(
        module=module, example_inputs=(torch.randn(1, 1, 6), torch.randn(1, 1, 16), torch.randn(1, 1, 16))
    )
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    recurrent = [layer for layer in runner.layers if layer["name"] == "lstm.weight_hh_l0"]
    assert (
        len(recurrent) == 1
        and recurrent[0]["format"].startswith("lstm-layer+")
        and recurrent[0]["calls"] == 1
    )
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
