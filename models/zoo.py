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


@ARCHITECTURES.register("lenet-5")
class LeNet5(nn.Module):
    """LeNet-5 (the CNN of Han et al. 2015) sized for 8x8 digits: two 3x3 conv + max-pool
    stages (6 and 16 channels), then 64 -> 120 -> 84 -> 10."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class CharLM(nn.Module):
    """Character-level language model: Embedding -> stacked LSTM or GRU -> Linear over the
    vocabulary. ``forward`` maps ids (N, T) to next-character logits (N, T, vocab)."""

    def __init__(self, rnn: type[nn.Module], vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


@ARCHITECTURES.register("char-lstm")
def char_lstm(vocab: int = 98, embed: int = 32, hidden: int = 256, layers: int = 1) -> CharLM:
    return CharLM(nn.LSTM, vocab, embed, hidden, layers)


@ARCHITECTURES.register("char-gru")
def char_gru(vocab: int = 98, embed: int = 32, hidden: int = 256, layers: int = 1) -> CharLM:
    return CharLM(nn.GRU, vocab, embed, hidden, layers)


@ARCHITECTURES.register("lstm-lm")
class LSTMLM(nn.Module):
    """A character-level LSTM language model that carries its state: ``forward(ids, h, c)`` maps
    ids (N, T) and the state (layers, N, hidden) to (logits (N, T, vocab), h, c).

    It trains on windows of text from a zero state (``h`` and ``c`` left out) and is deployed one
    token per call with the state passed in and returned: the work of one step of generation,
    where every weight is read once per token.
    """

    def __init__(self, vocab: int = 98, embed: int = 32, hidden: int = 1536, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor | None = None, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = None if h is None or c is None else (h, c)
        out, (h, c) = self.rnn(self.embed(x), state)
        return self.head(out), h, c
