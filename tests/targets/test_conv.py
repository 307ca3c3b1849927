"""Convolutions through the direct-convolution kernel, against torch: odd shapes, every stride,
padding, dilation and grouping the rewrite takes, and the forms it leaves to TVM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import State
from targets.base import Compiled
from targets.cpu import CPU
from targets.tvm import TvmBackend

CONVS = {  # (in, out, kernel, stride, padding, dilation, groups), input size
    "3x3": ((3, 5, 3, 1, 1, 1, 1), (9, 11)),
    "3x3-stride2": ((4, 6, 3, 2, 1, 1, 1), (10, 13)),
    "3x3-dilated": ((8, 8, 3, 1, 2, 2, 1), (13, 7)),
    "depthwise": ((6, 6, 3, 1, 1, 1, 6), (12, 12)),
    "depthwise-stride2": ((10, 10, 3, 2, 1, 1, 10), (17, 16)),
    "grouped-5x5-stride2": ((6, 12, 5, 2, 2, 1, 3), (15, 15)),
    "7x7-stride2": ((3, 7, 7, 2, 3, 1, 1), (20, 21)),
    "1x1": ((16, 24, 1, 1, 0, 1, 1), (7, 7)),  # narrower than a vector: its plane as one row
    "1x1-as-is": ((12, 10, 1, 1, 0, 1, 1), (5, 19)),  # one row, the last tile shifted left
    "1x1-tiny": ((8, 8, 1, 1, 0, 1, 1), (3, 3)),  # fewer positions than two vectors: prepared
    "1x1-stride2": ((9, 5, 1, 2, 0, 1, 1), (8, 9)),
    "3x3-stride3": ((2, 3, 3, 3, 2, 1, 1), (9, 9)),
    "narrow": ((5, 3, 3, 1, 0, 1, 1), (4, 4)),  # a 2x2 output: one tile narrower than a vector
    "3x3-many-channels": ((64, 8, 3, 1, 1, 1, 1), (10, 20)),  # input channels in blocks
    "3x3-three-vectors-wide": ((4, 6, 3, 1, 1, 1, 1), (5, 24)),  # tiles of one vector, none shifted
}


def conv_state(args: tuple[int, ...], size: tuple[int, int], sparsity: float) -> State:
    c, o, k, s, p, d, g = args
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, k, stride=s, padding=p, dilation=d, groups=g)
    with torch.no_grad():
        w = conv.weight
        w[torch.rand(w.shape) < sparsity] = 0
        w[0] = 0  # an output channel with no weights
        w[-1] = torch.randn(w.shape[1:])  # a fully dense one
    return State(module=nn.Sequential(conv, nn.ReLU()).eval(), example_inputs=(torch.randn(1, c, *size),))


@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("sparsity", [0.0, 0.8])
def test_conv_kernel_matches_torch(tmp_path: Path, name: str, sparsity: float) -> None:
    state = conv_state(*CONVS[name], sparsity)
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    _, o, k, *_, g = CONVS[name][0]
    # by the rule: a dense weight in blocks of as many output channels of a group as divide it
    rows = max(r for r in (1, 2, 4) if (o // g) % r == 0) if sparsity == 0.0 else 1
    (layer,) = runner.layers
    assert layer["format"].startswith(f"conv{k}x{k}") and layer["format"].endswith("+bias+relu")
    assert ("-csr+" if rows == 1 else f"-bsr{rows}x1+") in layer["format"]
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


def test_explicit_zero_padding_is_absorbed_into_the_convolution(tmp_path: Path) -> None:
    """TF-style models pad with their own op before a padding-free convolution."""
    from targets.tvm.export import export_relax
    from targets.tvm.rewrite_conv import rewrite_convs

    torch.manual_seed(0)
    module = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2)).eval()
    state = State(module=module, example_inputs=(torch.randn(1, 3, 12, 12),))
    before = export_relax(state)
    after, layers = rewrite_convs(before, lanes=8)
    assert "R.nn.pad" in before.script() and "R.nn.pad" not in after.script() and len(layers) == 1
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-5


def test_forms_the_kernel_does_not_take_are_left_to_tvm(tmp_path: Path) -> None:
    """A batch of two, and dilation with a stride: TVM's own convolution, still verified."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, dilation=2)).eval()
    for inputs in ((torch.randn(2, 3, 11, 11),), (torch.randn(1, 3, 11, 11),)):
        state = State(module=module, example_inputs=inputs)
        artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path / str(len(inputs[0])))
        formats = [layer["format"] for layer in runner.layers]
        assert formats == ([] if len(inputs[0]) == 2 else ["conv3x3-bsr4x1+bias"])
        assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


def test_batch_norm_is_folded_into_the_pruned_weight(tmp_path: Path) -> None:
    """Scaling a weight per output channel keeps its zeros: the kernel stores as many values."""
    from targets.tvm.conv_graph import fold_batch_norms
    from targets.tvm.export import export_relax, parameter_names

    torch.manual_seed(0)
    conv, norm = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape) < 0.7] = 0
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(0.5, 2)
    state = State(
        module=nn.Sequential(conv, norm, nn.ReLU()).eval(), example_inputs=(torch.randn(1, 4, 9, 9),)
    )
    names = parameter_names(state)
    module = export_relax(state)
    assert "R.nn.batch_norm" in module.script()
    folded = fold_batch_norms(module, names)
    assert "R.nn.batch_norm" not in folded.script()
    assert len(names) == 2 and set(names.values()) == {"0.weight"}  # the folded weight keeps its name
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    (layer,) = runner.layers
    assert layer["name"] == "0.weight" and layer["sparsity"] == round(
        float((conv.weight == 0).float().mean()), 4
    )
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


class Chain(nn.Module):
    """Two convolutions (the second pruned, without a bias, before a BatchNorm) and the
    elementwise ops after them that ``form`` names."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.first = nn.Conv2d(6, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.second.weight[torch.rand(self.second.weight.shape) < 0.7] = 0
            self.norm.running_mean.uniform_(-1, 1), self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "residual-shared":  # the first output, read by the second and the sum
            a = self.first(x)
            return a + self.norm(self.second(a))
        y = torch.nn.functional.relu6(self.first(x))
        z = self.norm(self.second(y))
        if self.form == "residual-left":
            return y + z
        if self.form == "residual-relu":
            return torch.relu(z + y)
        if self.form == "hardtanh":
            return torch.nn.functional.hardtanh(z, -0.5, 0.5)
        if self.form == "broadcast":  # a residual of another shape: left to TVM
            return z + y[:, :, :1, :]
        return torch.relu(z) + z  # "shared": the biased output is read twice


FIRST = "conv3x3+bias+relu6"
EPILOGUES = {  # the kernels' formats
    "residual-left": [FIRST, "conv3x3+bias+residual"],
    "residual-relu": [FIRST, "conv3x3+bias+residual+relu"],
    "hardtanh": [FIRST, "conv3x3+bias+clip"],
    "broadcast": [FIRST, "conv3x3+bias"],
    # a value inside a chain that is read elsewhere ends the chain there: each convolution is
    # computed once (z + relu(z): z's kernel takes neither; a + conv(a): the second takes a)
    "shared": [FIRST, "conv3x3+bias"],
    "residual-shared": ["conv3x3+bias", "conv3x3+bias+residual"],
}


@pytest.mark.parametrize("form", list(EPILOGUES))
def test_the_ops_after_a_convolution_go_into_its_epilogue(tmp_path: Path, form: str) -> None:
    torch.manual_seed(0)
    state = State(module=Chain(form).eval(), example_inputs=(torch.randn(1, 6, 9, 21),))
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    formats = sorted(re.sub(r"-(csr|bsr\dx1)", "", layer["format"]) for layer in runner.layers)
    assert formats == sorted(EPILOGUES[form])
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


@pytest.mark.parametrize("blocks", [1, 2, 3, 7])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_input_channel_blocks_keep_the_sum(blocks: int, groups: int, rows: int) -> None:
    """Partial sums per block of input channels, blocks of unequal sizes and empty ones; blocks
    of output channels sharing taps where only some of them have a weight."""
    import numpy as np
    import tvm

    from targets.tvm.devices import host_target
    from targets.tvm.kernels.conv_cpu import (
        ConvShape,
        Epilogue,
        channel_blocks,
        conv_kernel,
        pack,
        prepare_kernel,
    )

    shape = ConvShape(20, 9, 13, 8, (3, 3), 1, (1, 1, 1, 1), 1, groups)
    rng = np.random.default_rng(blocks)
    weight = rng.standard_normal((8, 20 // groups, 3, 3)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.6] = 0
    weight[1, : 10 // groups] = 0  # an output channel whose first blocks are empty
    weight[4:6] = 0  # a block of two output channels without weights
    bias, residual = rng.standard_normal(8).astype(np.float32), rng.standard_normal((8, 9, 13))
    values, offsets, indptr = pack(weight, shape, blocks, rows)
    assert len(indptr) == 8 // rows * blocks + 1 and len(values) == len(offsets) * rows
    if rows == 1:
        assert len(values) == np.count_nonzero(weight)
    epilogue = Epilogue(True, True, 0.0, None)
    funcs = {
        "conv": conv_kernel(shape, len(offsets), 8, epilogue=epilogue, blocks=blocks, rows=rows),
        "prepare": prepare_kernel(shape, 8),
    }
    module = tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()})
    lib = tvm.compile(module, target=tvm.target.Target(host_target()))
    x = rng.standard_normal((1, 20, 9, 13)).astype(np.float32)
    prepared = tvm.runtime.tensor(np.zeros(shape.prepared_size(8), np.float32))
    lib["prepare"](tvm.runtime.tensor(x), prepared)
    y = tvm.runtime.tensor(np.zeros(8 * 9 * 13, np.float32))
    arrays = (values, offsets, indptr, bias, residual.astype(np.float32))
    lib["conv"](prepared, *(tvm.runtime.tensor(a) for a in arrays), y)
    conv = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding=1, groups=groups)
    expected = torch.relu(conv[0] + torch.tensor(bias)[:, None, None] + torch.tensor(residual)).numpy()
    np.testing.assert_allclose(y.numpy().reshape(8, 9, 13), expected, atol=1e-4)
    assert channel_blocks(ConvShape(64, 56, 56, 64, (3, 3), 1, (1,) * 4, 1, 1), 64 * 64 * 4, 8) > 1


def test_an_output_only_a_convolution_reads_is_stored_as_its_prepared_input(tmp_path: Path) -> None:
    """A 1x1 expansion feeding a padded depthwise convolution (MobileNetV2's blocks, padded by
    the convolution or, TF-style, by its own op; of stride 1 or 2, split into phases), and that
    one feeding a convolution padded unevenly, store their outputs as the next one's prepared
    input, zeros around them: no preparation copies them. An output read twice is stored as it
    is and prepared, and so is one of odd width read by a convolution of stride 2."""
    from targets.tvm.export import export_relax
    from targets.tvm.rewrite_conv import rewrite_convs

    torch.manual_seed(0)
    chain = [nn.Conv2d(4, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6()]
    tf_style = [nn.Conv2d(4, 8, 1), nn.ReLU6(), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 8, 3, groups=8)]
    strided = [nn.Conv2d(4, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, 2, padding=1, groups=8), nn.ReLU6()]
    uneven = [nn.Conv2d(4, 6, 1), nn.Conv2d(6, 5, 5, 2, padding=(1, 2))]  # a 5x5 padded unevenly
    for name, module, size, prepares in (
        ("chain", nn.Sequential(*chain, nn.Conv2d(8, 6, (3, 5), padding=(0, 2))), (9, 13), 0),
        ("tf-style", nn.Sequential(*tf_style), (9, 13), 0),  # the explicit zero padding too
        ("stride-2", nn.Sequential(*strided), (11, 16), 0),
        ("stride-2-uneven", nn.Sequential(*uneven), (9, 18), 0),
        ("stride-2-odd-width", nn.Sequential(*strided), (10, 13), 1),
        ("read-twice", Twice(nn.Sequential(*chain)), (9, 13), 1),
    ):
        with torch.no_grad():
            module[0].weight[torch.rand(module[0].weight.shape) < 0.5] = 0
        state = State(module=module.eval(), example_inputs=(torch.randn(1, 4, *size),))
        after, _ = rewrite_convs(export_relax(state), lanes=8)
        called = {gvar.name_hint for gvar in tvm_calls(after)}
        assert len([c for c in called if c.startswith("prepare_conv_input")]) == prepares, name
        artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path / name)
        assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4, name


def test_an_output_of_odd_width_is_not_stored_in_phases() -> None:
    """Phases of 2 take a tile row's even and odd columns: a tile must start at an even column."""
    from targets.tvm.conv_layout import prepared_layout
    from targets.tvm.kernels.conv_cpu import ConvShape, Stored, conv_kernel

    reader = ConvShape(8, 9, 13, 8, (3, 3), 2, (1,) * 4, 1, 8)
    odd = ConvShape(4, 9, 13, 8, (1, 1), 1, (0,) * 4, 1, 1)
    with pytest.raises(ValueError, match="cannot store a 9x13 output in 2 x 2 phases"):
        conv_kernel(odd, 8, 8, stored=prepared_layout(reader, 8))
    with pytest.raises(ValueError, match="3 x 3 phases"):
        conv_kernel(odd, 8, 8, stored=Stored(stride=3))


class Twice(nn.Module):
    """``body``'s output read by a padded convolution and by the sum after it."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.conv = body, nn.Conv2d(8, 8, 3, padding=1)

    def __getitem__(self, index: int) -> nn.Module:
        return self.body[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.conv(y) * y


def tvm_calls(mod: object) -> list:
    from tvm import relax

    return list(relax.analysis.all_global_vars(mod["main"]))  # type: ignore[index]
