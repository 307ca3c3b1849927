"""The example architectures, registered by name for checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from compressor.registry import ARCHITECTURES


@ARCHITECTURES.register("lenet-300-100")
class LeNet300(nn.Module):
    """LeNet-300-100 (the MLP of Han et al. 2015), here on 8x8 digits: 64 -> 300 -> 100 -> 10."""

    def __init__(self, inputs: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@ARCHITECTURES.register("lstm-classifier")
class LSTMClassifier(nn.Module):
    """Reads an image row by row (8 steps of 8 pixels) and classifies from the last step."""

    def __init__(self, inputs: int = 8, hidden: int = 128, layers: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])
