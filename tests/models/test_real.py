"""Real architectures (``models/real.py``) in small configurations: their initialisation keeps
activations alive, and global pruning at 90% neither collapses a layer nor the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor import PassContext, Pipeline, State, load_model
from models import real
from passes import MagnitudePrune
from targets import lower
from targets.base import Compiled
from targets.cpu import CPU
from targets.tvm import TvmBackend

transformers = pytest.importorskip("transformers", reason="the real architectures need transformers")

SMALL = {
    "acoustic-bilstm": lambda: real.acoustic(features=80, hidden=48, frames=12),
    "mobilenet-v2": lambda: real.mobilenet_v2(image=64, classes=100),
    "resnet-18": lambda: real.resnet18(image=64, classes=100),
    "bert": lambda: real.bert(layers=2, hidden=64, heads=2, intermediate=128, seq=16, vocab=500),
    "vit": lambda: real.vit(layers=2, hidden=48, heads=2, image=32),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_outputs_neither_vanish_nor_explode(name: str) -> None:
    module, inputs = SMALL[name]()
    with torch.no_grad():
        out = module(*inputs)
    assert 1e-2 < float(out.std()) < 1e2, float(out.std())


@pytest.mark.parametrize("name", ["acoustic-bilstm", "mobilenet-v2"])
def test_global_pruning_to_90_percent_keeps_every_layer_and_the_output_alive(name: str) -> None:
    """Their output layers hold the smallest weights: one global ranking took them to 100%, and
    the model returned its bias whatever it was given."""
    module, inputs = SMALL[name]()
    state = Pipeline([MagnitudePrune(sparsity=0.9)]).run(State(module=module, example_inputs=inputs))
    sparsities = state.history[0].changes["layer_sparsity"]
    assert max(sparsities.values()) <= 0.99 + 1e-6 and state.stats().sparsity > 0.85
    with torch.no_grad():
        a = state.module(*inputs)
        b = state.module(*(torch.randn_like(x) for x in inputs))
    assert float((a - b).abs().max()) > 1e-3 * float(a.abs().max())


def test_a_bert_style_encoder_lowers_and_verifies_on_both_backends(tmp_path: Path) -> None:
    module, inputs = SMALL["bert"]()
    path = tmp_path / "bert.pt2"
    real.export(module, inputs, path)
    state = MagnitudePrune(sparsity=0.9).apply(load_model(path), PassContext()).state
    assert state.example_inputs[0].dtype == torch.long
    assert lower(state, "cpu", "onnxruntime", tmp_path / "ort").verify().max_abs_error < 1e-4
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path / "tvm")  # kernels by rule
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
    assert {k["format"][:3] for k in runner.layers} == {"csr"}  # every linear layer went sparse


def test_a_gpt2_style_model_lowers_with_its_conv1d_layers_through_our_kernels(tmp_path: Path) -> None:
    """Its key/value cache starts from an empty 1-D tensor (which Relax's concat rejected), and
    its Conv1D layers compute ``x @ W + b``."""
    module, inputs = real.gpt2(layers=2, hidden=64, heads=2, seq=16, vocab=500)
    state = (
        MagnitudePrune(sparsity=0.8).apply(State(module=module, example_inputs=inputs), PassContext()).state
    )
    artifact, runner = TvmBackend(measure=False).build(state, CPU, tmp_path)
    names = [layer["name"] for layer in runner.layers]
    assert sum(".attn.c_attn." in n or ".mlp.c_fc." in n for n in names) == 4
    assert Compiled(CPU, "tvm", artifact, runner, state).verify().max_abs_error < 1e-4
