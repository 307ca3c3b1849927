from __future__ import annotations

import pytest
import torch

from compressor import State, Task
from models.zoo import LeNet300


@pytest.fixture
def tiny_state(tiny_task: Task) -> State:
    torch.manual_seed(0)
    return State(module=LeNet300().eval(), example_inputs=(torch.rand(1, 64),), task=tiny_task)
