from __future__ import annotations

import pytest
import torch

from compressor import State, Task
from models.zoo import LeNet300


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
def tiny_state(tiny_task: Task) -> State:
    torch.manual_seed(0)
    return State(module=LeNet300().eval(), example_inputs=(torch.rand(1, 64),), task=tiny_task)
