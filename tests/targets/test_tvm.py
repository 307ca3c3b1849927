from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import targets.tvm.cpu
import targets.tvm.rewrite
from compressor import PassContext, State, VerificationError, load_model
from passes import MagnitudePrune
from targets import backends_for, lower
from targets.base import Compiled
from targets.cpu import CPU
from targets.remote import LOCAL, Device
from targets.tvm import KernelChooser, TvmBackend, host_target
from targets.tvm.kernels import Format, Packed, pack


@pytest.mark.parametrize("model", ["lenet300.pt", "lstm.pt", "lenet5.pt", "lstm.pt2"])
def test_tvm_lowering_verifies(zoo: Path, tmp_path: Path, model: str) -> None:
    state = MagnitudePrune(sparsity=0.8).apply(load_model(zoo / model), PassContext()).state
    compiled = lower(state, "cpu", "tvm", tmp_path)
    assert compiled.artifact == tmp_path / "model.so" and compiled.artifact.is_file()
    assert compiled.verify().max_abs_error < 1e-4


@pytest.mark.parametrize("kernels", [True, False])
def test_the_weights_go_to_params_npz_not_into_the_library(tmp_path: Path, kernels: bool) -> None:
    """The library is the code alone (a worker then holds each weight once); ``main`` takes the
    weights, folded as TVM folds them, from ``params.npz``."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128)).eval()
    state = State(module=module, example_inputs=(torch.rand(1, 256),))
    artifact, runner = TvmBackend(kernels=kernels, measure=False).build(state, CPU, tmp_path)
    matrices = 4 * (256 * 512 + 512 * 128)
    with np.load(tmp_path / "params.npz") as params:
        assert sum(params[key].nbytes for key in params.files) >= matrices
    assert artifact.stat().st_size < matrices / 4
    compiled = Compiled(CPU, "tvm", artifact, runner, state)
    assert compiled.nbytes > matrices
    assert compiled.verify().max_abs_error < 1e-4


class Steps(nn.Module):
    """One weight applied at every step of a loop, as an unrolled recurrent layer applies W_hh."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 256) / 16)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for _ in range(6):
            h = torch.tanh(h @ self.w.T)
        return h


def test_a_weight_folded_at_every_step_is_one_parameter(tmp_path: Path) -> None:
    """Folding transposes W once per use: six equal constants, which must be stored once."""
    torch.manual_seed(0)
    state = State(module=Steps().eval(), example_inputs=(torch.rand(1, 256),))
    artifact, runner = TvmBackend(kernels=False, measure=False).build(state, CPU, tmp_path)
    with np.load(tmp_path / "params.npz") as params:
        stored = [params[key] for key in params.files]
    assert sum(a.nbytes for a in stored) == 256 * 256 * 4
    np.testing.assert_array_equal(stored[0], state.module.w.detach().numpy().T)
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


def test_negative_index_miscompile_is_worked_around_and_caught(zoo: Path, tmp_path: Path) -> None:
    """The LSTM classifier reads ``out[:, -1]``, which the Relax frontend miscomputes as is."""
    state = load_model(zoo / "lstm.pt")
    target = lower(state, "cpu", "tvm", tmp_path / "fixed").target
    artifact, runner = TvmBackend(fix_indices=False).build(state, target, tmp_path / "raw")
    # It reads out of bounds: garbage, sometimes NaN.
    with pytest.raises(VerificationError, match="differs from the torch model|holds (NaN|inf) where"):
        Compiled(target, "tvm", artifact, runner, state).verify()


def test_auto_builds_tvm_too_after_onnxruntime() -> None:
    assert backends_for("cpu", "auto") == ["onnxruntime", "tvm"]
    assert backends_for("cpu", "tvm") == ["tvm"]


def two_layer_state(sparsities: tuple[float, float]) -> State:
    """An MLP whose layers are magnitude-pruned to ``sparsities``."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32)).eval()
    with torch.no_grad():
        for layer, sparsity in zip((module[0], module[2]), sparsities, strict=True):
            w = layer.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(sparsity * w.numel())).values] = 0
    return State(module=module, example_inputs=(torch.rand(1, 64),))


def test_rewrite_keeps_layers_below_the_threshold_dense(tmp_path: Path) -> None:
    state = two_layer_state((0.3, 0.9))
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    formats = {layer["name"]: layer["format"] for layer in runner.layers}
    assert formats["0.weight"].startswith("dense") and formats["2.weight"].startswith("csr")
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-5


def test_choice_is_measured_cached_and_skips_sparse_formats_below_the_threshold(tmp_path: Path) -> None:
    timed: list[Format] = []

    def timer(kernels: list[tuple[object, Packed]], batch: int) -> list[float]:
        timed.extend(packed.format for _, packed in kernels)
        return [1e-6 if packed.format.name == "bsr4x1-u4" else 1e-3 for _, packed in kernels]

    rng = np.random.default_rng(0)
    dense_w = rng.standard_normal((32, 48)).astype(np.float32)
    dense_w[rng.random(dense_w.shape) < 0.3] = 0
    chooser = KernelChooser(host_target(), cache=tmp_path / "cache.json", timer=timer)
    assert not chooser.choose(dense_w, 1).format.sparse
    assert timed and not any(f.sparse for f in timed)
    blocks = np.repeat(rng.random((8, 48)) < 0.1, 4, axis=0)  # 90% sparse in 4x1 blocks
    sparse_w = (blocks * rng.standard_normal((32, 48))).astype(np.float32)
    choice = chooser.choose(sparse_w, 1)
    assert choice.format.name == "bsr4x1-u4" and not choice.cached
    assert set(choice.times_ms) >= {"dense-u1", "csr-u8", "bsr4x1-u4"}
    timed.clear()
    again = KernelChooser(host_target(), cache=tmp_path / "cache.json", timer=timer).choose(sparse_w, 1)
    assert again.cached and again.format == choice.format and not timed


def test_weights_of_one_shape_and_density_share_a_decision(tmp_path: Path) -> None:
    """A second weight of the same shape and about the same density (another pattern) is not
    timed; one of another density, or another shape, is."""
    timed: list[int] = []

    def timer(kernels: list[tuple[object, Packed]], batch: int) -> list[float]:
        timed.append(len(kernels))
        return [1e-3] * len(kernels)

    rng = np.random.default_rng(0)

    def pruned(shape: tuple[int, int], density: float) -> np.ndarray:
        weight = rng.standard_normal(shape).astype(np.float32)
        weight[rng.random(shape) >= density] = 0
        return weight

    chooser = KernelChooser(host_target(), cache=tmp_path / "cache.json", timer=timer)
    first = pruned((64, 96), 0.10)
    assert not chooser.choose(first, 1).cached and len(timed) == 1
    like = pruned((64, 96), 0.10)
    assert not np.array_equal(like != 0, first != 0)
    assert chooser.choose(like, 1).cached and len(timed) == 1
    assert not chooser.choose(pruned((64, 96), 0.30), 1).cached and len(timed) == 2
    assert not chooser.choose(pruned((96, 64), 0.10), 1).cached and len(timed) == 3


def test_verification_catches_a_wrong_sparse_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparse kernel that reads the column after the right one (an off-by-one index)."""

    def off_by_one(weight: np.ndarray, fmt: Format) -> Packed:
        packed = pack(weight, fmt)
        if fmt.sparse:
            indices = packed.arrays[1]
            indices[:] = np.minimum(indices + 1, weight.shape[1] - fmt.block[1])
        return packed

    monkeypatch.setattr(targets.tvm.rewrite, "pack", off_by_one)
    state = two_layer_state((0.3, 0.9))
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    with pytest.raises(VerificationError, match="differs from the torch model"):
        Compiled(CPU, "tvm", artifact, runner, state).verify()


def test_kernel_decisions_are_kept_per_device_and_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two aarch64 phones do not share decisions, nor do runs with different thread counts."""
    timed: list[int] = []

    def timer(kernels: list[tuple[object, Packed]], batch: int) -> list[float]:
        timed.append(len(kernels))
        return [1e-3] * len(kernels)

    weight = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    cache = tmp_path / "cache.json"

    def choose(device: Device) -> bool:
        return KernelChooser(host_target(), cache=cache, timer=timer, device=device).choose(weight, 1).cached

    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert not choose(LOCAL) and choose(LOCAL)
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert not choose(LOCAL)
    big = {"machine": "aarch64", "cpu": "0x41, 0xd44", "cpus": 8, "gpu": None, "emulated": False}
    small = {**big, "cpu": "0x41, 0xd05"}
    assert not choose(Device("phone a", session=object(), info=big))
    assert not choose(Device("phone b", session=object(), info=small))
    assert choose(Device("phone a again", session=object(), info=dict(big)))
    plain = [Device(f"plain {a}", session=object(), address=a) for a in ("a:9090", "b:9090")]
    assert not choose(plain[0]) and not choose(plain[1]) and choose(plain[0])
    assert len(timed) == 6


class Attention(nn.Module):
    """Self-attention as model code writes it: two matmuls of activations per head, softmax,
    GELU; a head dimension and a sequence off every vector width."""

    def __init__(self, dim: int = 36, heads: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        return nn.functional.gelu(self.out(mixed)) @ self.out.weight  # and an ``x @ W``


def test_attention_matmuls_go_through_our_gemm_and_x_at_w_through_the_weight_kernels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = State(module=Attention().eval(), example_inputs=(torch.randn(1, 13, 36),))
    backend = TvmBackend(measure=False)
    artifact, runner = backend.build(state, CPU, tmp_path)
    assert backend.gemms == 2  # Q @ K^T and P @ V
    # qkv and out as x @ W.T, and out's weight once more as x @ W: the kernel takes it transposed
    assert [tuple(layer["shape"]) for layer in runner.layers] == [(108, 36), (36, 36), (36, 36)]
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


def test_the_rewrite_leaves_broadcast_matmuls_to_tvm() -> None:
    from tvm import relax

    from targets.tvm.rewrite import rewrite_gemms

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((2, 3, 4), "float32"))
    b = relax.Var("b", relax.TensorType((1, 4, 5), "float32"))
    with bb.function("main", [a, b]):
        bb.emit_func_output(bb.emit(relax.op.matmul(a, b)))
    mod, rewritten = rewrite_gemms(bb.get(), lambda *shape: pytest.fail("no GEMM for a broadcast"))
    assert rewritten == 0 and "R.matmul" in mod.script()


def test_fast_math_stays_within_float32_rounding_of_torch() -> None:
    import tvm
    from tvm import relax

    from targets.tvm.fastmath import fast_math_pass

    x = torch.linspace(-12, 12, 4001)
    xv = relax.Var("x", relax.TensorType((4001,), "float32"))
    ops = {
        "gelu": (relax.op.nn.gelu, nn.functional.gelu),
        "gelu_tanh": (relax.op.nn.gelu_tanh, lambda t: nn.functional.gelu(t, approximate="tanh")),
        "sigmoid": (relax.op.sigmoid, torch.sigmoid),
        "tanh": (relax.op.tanh, torch.tanh),
        "erf": (relax.op.erf, torch.erf),
        "softmax": (relax.op.nn.softmax, lambda t: t.softmax(-1)),
    }
    for name, (op, reference) in ops.items():
        bb = relax.BlockBuilder()
        with bb.function("main", [xv]):
            bb.emit_func_output(bb.normalize(op(xv)))
        mod = fast_math_pass(8)(bb.get())
        script = mod.script()
        assert "R.call_tir" in script and f"R.{name}(" not in script and f"R.nn.{name}(" not in script
        lib = tvm.compile(mod, target="llvm")
        vm = relax.VirtualMachine(lib, tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
        want = reference(x.double()).numpy()
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 37), (5, 8), (3,)])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_kernel_matches_torch(shape: tuple[int, ...], axis: int) -> None:
    """Rows of a vector's multiple, with a tail, shorter than a vector; masked scores (-1e4,
    -inf); another axis left to TVM's softmax."""
    import tvm
    from tvm import relax

    from targets.tvm.fastmath import fast_math_pass

    torch.manual_seed(0)
    x = torch.randn(shape) * 6
    x.view(-1)[:2] = torch.tensor([-1e4, -float("inf")])
    xv = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [xv]):
        bb.emit_func_output(bb.normalize(relax.op.nn.softmax(xv, axis)))
    mod = fast_math_pass(8)(bb.get())
    ours = axis == -1 or len(shape) == 1
    assert ("softmax_rows_0" in mod.script()) == ours
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, x.double().softmax(axis).numpy(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 16), (5,)])
def test_layer_norm_kernel_matches_torch(shape: tuple[int, ...]) -> None:
    """Rows of a vector's multiple, with a tail, shorter than a vector; a large offset (the
    variance taken around the mean, not as E[x^2] - E[x]^2)."""
    import tvm
    from tvm import relax

    from targets.tvm.fastmath import fast_math_pass

    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 100
    gamma, beta = torch.randn(shape[-1]), torch.randn(shape[-1])
    args = [
        relax.Var(n, relax.TensorType(t.shape, "float32"))
        for n, t in zip("xgb", (x, gamma, beta), strict=True)
    ]
    bb = relax.BlockBuilder()
    with bb.function("main", args):
        bb.emit_func_output(bb.normalize(relax.op.nn.layer_norm(*args, axes=[-1], epsilon=1e-5)))
    mod = fast_math_pass(8)(bb.get())
    assert "layer_norm_rows_0" in mod.script() and "R.nn.layer_norm" not in mod.script()
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(t.numpy()) for t in (x, gamma, beta))).numpy()
    want = nn.functional.layer_norm(x.double(), shape[-1:], gamma.double(), beta.double(), 1e-5)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=2e-5)


def test_weights_through_the_gemm_beside_attention_gemms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The register-blocked GEMM as the kernel of constant weights (what the choice picks for a
    dense layer at batch > 1), in one module with the GEMMs of attention."""
    monkeypatch.setattr(targets.tvm.cpu.CpuKernels, "rule", lambda self, *args: Format("gemm"))
    torch.manual_seed(0)
    state = State(module=Attention().eval(), example_inputs=(torch.randn(1, 13, 36),))
    backend = TvmBackend(measure=False)
    artifact, runner = backend.build(state, CPU, tmp_path)
    assert backend.gemms == 2 and {layer["format"] for layer in runner.layers} == {"gemm"}
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4


POOLS = {  # the layer, and the input's shape
    "max-3x3-stride2": (lambda: nn.MaxPool2d(3, 2, 1), (1, 32, 41, 40)),
    "avg-2x2-stride2": (lambda: nn.AvgPool2d(2, 2), (1, 64, 32, 33)),
    "global-avg-7x7": (lambda: nn.AdaptiveAvgPool2d(1), (1, 512, 7, 7)),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_runs_in_parallel_and_matches_torch(name: str) -> None:
    """The window rule schedules pooling (a reduction over a small window per output) in
    parallel with its window unrolled, and the result is torch's."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight

    from targets.tvm.export import export_relax
    from targets.tvm.schedule import window_rule

    make, shape = POOLS[name]
    op = make()
    torch.manual_seed(0)
    x = torch.randn(shape)
    target = tvm.target.Target(host_target())
    with target:
        relax_mod = export_relax(State(module=op, example_inputs=(x,)))
        mod = tvm.transform.Sequential(cpu.legalize_passes(target))(relax_mod)
        scheduled = dlight.ApplyDefaultSchedule(window_rule())(mod)
    kernels = [f.script() for gv, f in scheduled.functions.items() if gv.name_hint != "main"]
    # the global average is too little work to share between threads
    parallel = name != "global-avg-7x7"
    assert any(("T.parallel" in k) == parallel and "T.unroll" in k for k in kernels), kernels
    vm = relax.VirtualMachine(tvm.compile(scheduled, target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))
    got = got[0] if isinstance(got, tvm.ir.Array | list | tuple) else got
    np.testing.assert_allclose(got.numpy(), op(x).numpy(), rtol=1e-5, atol=1e-6)
