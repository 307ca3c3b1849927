"""Shared fixtures: the example models trained once per session, in every format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from compressor import State, Task
from models.train import write_all
from models.zoo import LeNet300, LSTMClassifier


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the TVM backend's kernel decisions out of the user's cache; share them in the session."""
    from targets.emulator import root_dir

    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPRESSOR_ARM64_ROOT", str(root_dir()))  # the emulator's root is re-used, not remade
    mp.setenv("COMPRESSOR_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models.train`` output: lenet300/lstm/lenet5 as .pt, .pt2, _pickled.pt, _prune.pt + data."""
    out = tmp_path_factory.mktemp("zoo")
    for name in ("lenet300", "lstm", "lenet5"):
        accuracy = write_all(name, out)
        assert accuracy > 90.0, f"{name} trained to only {accuracy:.1f}% on digits"
    return out


@pytest.fixture
def tiny_task() -> Task:
    """A learnable toy task: 4 classes given by a random linear teacher."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(64, 4, generator=g)
    tensors = {}
    for split, n in (("train", 512), ("val", 128)):
        x = torch.randn(n, 64, generator=g)
        tensors[f"x_{split}"], tensors[f"y_{split}"] = x, (x @ teacher).argmax(1)
    return Task(tensors, "cross-entropy", "accuracy")


@pytest.fixture
def lenet_state() -> State:
    torch.manual_seed(0)
    return State(module=LeNet300().eval(), example_inputs=(torch.rand(1, 64),))


@pytest.fixture
def lstm_state() -> State:
    torch.manual_seed(0)
    return State(module=LSTMClassifier(hidden=32).eval(), example_inputs=(torch.rand(2, 8, 8),))
