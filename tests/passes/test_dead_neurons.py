"""Dead-neuron removal shrinks layers and leaves outputs equal (within 1e-5) on fresh inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor import PassContext, State
from passes import RemoveDeadNeurons, StructuredPrune
from passes.dead_neurons import apply_plan, make_plan, slice_like, slice_optimizer
from passes.dependency import analyse


class MLP(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))

    def kill(self) -> None:
        self[0].weight[3] = 0  # no inputs, zero bias: outputs 0
        self[0].bias[3] = 0
        self[0].weight[5] = 0  # no inputs, bias 0.7: relu(0.7) is folded into layer 2's bias
        self[0].bias[5] = 0.7
        self[2].weight[:, 7] = 0  # unit 7 feeds nothing
        self[4].weight[:, 2] = 0


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(x + y)
        return self.fc(torch.max_pool2d(x, 2).flatten(1))

    def kill(self) -> None:
        self.conv2.weight[:, 4] = 0  # conv1 channel 4 (with its bn1 entry) feeds nothing
        self.fc.weight[:, 8:12] = 0  # channel 2 of the residual sum: unused downstream ...
        self.conv1.weight[:, 2] = 0  # ... and by conv1: stem[2], bn0[2], conv2[2], bn2[2] go together


class EmbeddingLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 10)
        self.rnn = nn.LSTM(10, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])

    def kill(self) -> None:
        self.embed.weight[:, 4] = 0  # an embedding column of zeros
        for layer in (0, 1):  # hidden unit 5: zero candidate gate in both layers -> h = 0
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, f"{name}_l{layer}")[2 * 12 + 5] = 0
        self.rnn.weight_hh_l0[:, 9] = 0  # hidden unit 9: unused in layer 0 ...
        self.rnn.weight_ih_l1[:, 9] = 0
        self.rnn.weight_hh_l1[:, 9] = 0  # ... and in layer 1
        self.head.weight[:, 9] = 0


class BiGRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])

    def kill(self) -> None:
        for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):  # unit 3: n gate always 0
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, f"{name}{suffix}")[2 * 8 + 3] = 0
        self.rnn.weight_ih_l0[:, 1] = 0  # input feature 1 is never read: stays (it is the input)


class VanillaRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(5, 10, batch_first=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])

    def kill(self) -> None:
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(self.rnn, name)[6] = 0


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 7)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.tanh(self.a(x)), torch.relu(self.b(x))], dim=-1))

    def kill(self) -> None:
        self.head.weight[:, 1] = 0  # a[1]
        self.head.weight[:, 5 + 6] = 0  # b[6]
        self.b.weight[2] = 0  # b[2]: relu(0) = 0
        self.b.bias[2] = 0


CASES = {
    "mlp": (MLP, lambda: (torch.randn(4, 8),), {"0": 3, "2": 1}),
    "cnn-bn-residual": (ResidualCNN, lambda: (torch.randn(2, 3, 4, 4),), {"conv1": 1, "stem": 1, "conv2": 1}),
    "embedding-lstm-lm": (EmbeddingLSTM, lambda: (torch.randint(0, 20, (2, 7)),), {"embed": 1, "rnn": 2}),
    "bigru-classifier": (BiGRUClassifier, lambda: (torch.randn(2, 5, 6),), {"rnn": 1}),
    "vanilla-rnn": (VanillaRNN, lambda: (torch.randn(2, 5, 5),), {"rnn": 1}),
    "concat-branches": (TwoBranches, lambda: (torch.randn(3, 6),), {"a": 1, "b": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_removal_is_exact(case: str) -> None:
    build, inputs, expected = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.kill()
    state = State(model, inputs())
    result = RemoveDeadNeurons().apply(state, PassContext())
    assert result.changes["removed"] == expected
    smaller = result.state.module
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in model.parameters())
    for _ in range(3):
        x = inputs()
        torch.testing.assert_close(smaller(*x), model(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case", ["embedding-lstm-lm", "bigru-classifier", "cnn-bn-residual", "concat-branches"]
)
def test_structured_prune_then_removal(case: str) -> None:
    """Half the units of every layer masked whole, then removed: same outputs as the masked model."""
    build, inputs, _ = CASES[case]
    torch.manual_seed(0)
    state = State(build().eval(), inputs())
    pruned = StructuredPrune(sparsity=0.5, norm="l1").apply(state, PassContext()).state
    result = RemoveDeadNeurons().apply(pruned, PassContext())
    assert result.changes["removed"] and set(result.changes["removed"]) <= set(pruned.masks) | {
        n.rsplit(".", 1)[0] for n in pruned.masks
    }
    for fqn, mask in result.state.masks.items():
        assert mask.shape == result.state.module.get_parameter(fqn).shape
    for _ in range(3):
        x = inputs()
        torch.testing.assert_close(result.state.module(*x), pruned.module(*x), rtol=1e-5, atol=1e-5)


def test_lstm_hidden_units_go_from_every_layer_and_gate() -> None:
    torch.manual_seed(0)
    state = State(EmbeddingLSTM().eval(), (torch.randint(0, 20, (2, 7)),))
    pruned = StructuredPrune(sparsity=0.5, layers=("rnn",)).apply(state, PassContext()).state
    rnn = RemoveDeadNeurons().apply(pruned, PassContext()).state.module.rnn
    assert rnn.hidden_size == 6 and rnn.num_layers == 2
    assert rnn.weight_ih_l0.shape == (24, 10) and rnn.weight_ih_l1.shape == (24, 6)
    assert rnn.weight_hh_l1.shape == (24, 6)


def test_optimizer_state_is_sliced_with_the_parameters() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.kill()
    before = {n: optimizer.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    old_params = dict(model.named_parameters())
    state = State(model, (torch.randn(2, 8),))
    analysis = analyse(model, state.example_inputs)
    work, index = apply_plan(state.clone(), make_plan(analysis), analysis)
    assert set(index) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    slice_optimizer(optimizer, old_params, work.module, index)
    for name, param in work.module.named_parameters():
        moment = optimizer.state[param]["exp_avg"]
        assert moment.shape == param.shape
        torch.testing.assert_close(moment, slice_like(before[name], index[name]))
    work.module(torch.randn(4, 8)).sum().backward()
    optimizer.step()  # and it still steps


class Shuffled(nn.Module):
    """Permutes channels with advanced indexing, which the analysis does not follow."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h[:, torch.tensor([5, 4, 3, 2, 1, 0])])


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else -self.a(x)


def test_uncovered_ops_are_reported_not_removed() -> None:
    torch.manual_seed(0)
    model = Shuffled().eval()
    with torch.no_grad():
        model.b.weight[:, 0] = 0  # reads a[5] through the permutation
    result = RemoveDeadNeurons().apply(State(model, (torch.randn(2, 4),)), PassContext())
    assert result.changes["removed"] == {}
    assert "aten.index.Tensor, which the analysis does not cover" in result.changes["kept"]["a"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(result.state.module(x), model(x))


def test_graphs_that_cannot_be_captured_are_refused() -> None:
    result = RemoveDeadNeurons().apply(State(Branchy().eval(), (torch.randn(2, 4),)), PassContext())
    assert "torch.export cannot capture the model" in result.changes["refused"]
    assert result.state.module.a.weight.shape == (4, 4)


def test_export_archives_are_refused_with_the_reason(zoo) -> None:
    from compressor import load_model

    state = load_model(zoo / "lenet300.pt2")
    result = RemoveDeadNeurons().apply(state, PassContext())
    assert "not a torch.nn layer" in result.changes["refused"]


class DeadBranch(nn.Module):
    """``cat(a, b) + d``: b is entirely dead and so are d's units added to it; a[1] + d[1] is dead too."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.d, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=-1) + self.d(x))


def test_a_wholly_dead_layer_keeps_the_units_coupled_to_it() -> None:
    torch.manual_seed(0)
    model = DeadBranch().eval()
    with torch.no_grad():
        model.b.weight.zero_()
        model.b.bias.zero_()
        for layer, row in ((model.d, 3), (model.d, 4), (model.d, 5), (model.a, 1), (model.d, 1)):
            layer.weight[row] = 0
            layer.bias[row] = 0
    result = RemoveDeadNeurons().apply(State(model, (torch.randn(2, 4),)), PassContext())
    assert result.changes["removed"] == {"a": 1, "d": 1}  # d[3:6] stay with b, which cannot go
    assert "every unit is dead" in result.changes["kept"]["b"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(result.state.module(x), model(x))
