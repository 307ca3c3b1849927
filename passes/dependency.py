"""Which output units of a layer feed which input columns downstream (DepGraph's idea, small).

The model is exported with ``torch.export`` and its aten graph walked once. Every tensor gets a
``ChannelMap``: along one axis, each position lists the producer units it carries, and the
constant value it holds when those units are dead (zero weights in). Producers (Linear, Conv2d,
Embedding, LSTM/GRU/RNN) create units; consumers (Linear, Conv2d, the first RNN layer) read
positions; activations, BatchNorm, pooling, reshapes, ``getitem`` of RNN outputs, selects over
other axes, concatenation and residual adds carry or merge them. A unit whose channel reaches
the model output, an op the analysis does not cover, or a slice of the channel axis is pinned:
it is never removed, and the reason is kept for the report.

Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023 (arXiv:2301.12900).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Unit = tuple[str, int]  # (module fqn, output index: row, channel, column, or d * hidden + j for RNNs)

OUTPUT = "reaches the model output"
RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
PRODUCERS = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LSTM, nn.GRU, nn.RNN)
_aten = torch.ops.aten
UNARY = {
    _aten.relu.default,
    _aten.tanh.default,
    _aten.sigmoid.default,
    _aten.gelu.default,
    _aten.silu.default,
    _aten.hardtanh.default,
    _aten.leaky_relu.default,
    _aten.elu.default,
    _aten.dropout.default,
    _aten.clone.default,
    _aten.alias.default,
    _aten.contiguous.default,
    _aten.detach.default,
    _aten.relu_.default,
}
"""Elementwise, one tensor in: positions pass through, constants go through the op."""
MOVES = {
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
    _aten.flatten.using_ints,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.t.default,
    _aten.unsqueeze.default,
    _aten.squeeze.dim,
    _aten.squeeze.dims,
    _aten.select.int,
    _aten.slice.Tensor,
    _aten.expand.default,
    _aten.unflatten.int,
    _aten.mean.dim,
    _aten.max_pool2d.default,
    _aten.adaptive_avg_pool2d.default,
    _aten.max_pool1d.default,
    _aten.adaptive_avg_pool1d.default,
}
"""Move, select or average values without mixing channels: mapped by probing with channel ids."""
BINARY = {
    _aten.add.Tensor: operator.add,
    _aten.sub.Tensor: operator.sub,
    _aten.mul.Tensor: operator.mul,
    _aten.div.Tensor: operator.truediv,
}
RNN_OPS = {_aten.lstm.input, _aten.gru.input, _aten.rnn_tanh.input, _aten.rnn_relu.input}


@dataclass
class ChannelMap:
    axis: int
    sources: list[frozenset[Unit]]
    consts: list[float | None]


@dataclass
class Use:
    """A consumer module reading positions of its input (Linear/RNN: last axis; Conv: axis 1),
    or a BatchNorm following the channels of its input (``follower``)."""

    fqn: str
    sources: list[frozenset[Unit]]
    consts: list[float | None]
    follower: bool = False


@dataclass
class Analysis:
    modules: dict[str, nn.Module]
    uses: list[Use] = field(default_factory=list)
    pinned: dict[Unit, str] = field(default_factory=dict)
    units: set[Unit] = field(default_factory=set)

    def pin(self, sources: Iterable[frozenset[Unit]], reason: str) -> None:
        for units in sources:
            for unit in units:
                self.pinned.setdefault(unit, reason)

    def groups(self) -> list[frozenset[Unit]]:
        """Units that must be removed together: those sharing a position anywhere (residual adds)."""
        parent = {u: u for u in self.units}

        def find(u: Unit) -> Unit:
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for use in self.uses:
            for units in use.sources:
                first, *rest = sorted(units) or [None]
                for other in rest:
                    parent[find(other)] = find(first)
        for fqn, module in self.modules.items():  # an RNN's hidden unit j spans both directions
            if isinstance(module, tuple(RNN_GATES)) and module.bidirectional:
                for j in range(module.hidden_size):
                    parent[find((fqn, module.hidden_size + j))] = find((fqn, j))
        out: dict[Unit, set[Unit]] = {}
        for u in self.units:
            out.setdefault(find(u), set()).add(u)
        return [frozenset(g) for g in out.values()]


def unit_count(module: nn.Module) -> int:
    """Units a producer has: Linear rows, Conv2d channels, Embedding columns, RNN hidden units."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return module.hidden_size


def directions(layer: nn.Module) -> int:
    return 2 if getattr(layer, "bidirectional", False) else 1


class Unsupported(Exception):
    """The model has no graph the analysis can read (the caller refuses with this reason)."""


def analyse(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Analysis:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, example_inputs)
    except Exception as e:
        raise Unsupported(f"torch.export cannot capture the model ({type(e).__name__})") from None
    signature = program.graph_signature
    fqn_of = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    modules = dict(module.named_modules())
    walker = _Walker(
        Analysis({f: m for f, m in modules.items() if isinstance(m, PRODUCERS)}), fqn_of, modules
    )
    for node in program.graph.nodes:
        walker.visit(node)
    return walker.analysis


class _Walker:
    def __init__(self, analysis: Analysis, fqn_of: dict[str, str], modules: dict[str, nn.Module]) -> None:
        self.analysis, self.fqn_of, self.modules = analysis, fqn_of, modules
        self.maps: dict[Any, Any] = {}  # node -> ChannelMap, tuple of maps (RNN outputs), or None

    # --- helpers ---------------------------------------------------------------------------

    def owner(self, node: Any) -> tuple[str, nn.Module]:
        fqn = self.fqn_of[node.name].rsplit(".", 1)[0]
        module = self.modules.get(fqn)
        if not isinstance(module, (*PRODUCERS, nn.modules.batchnorm._BatchNorm)):
            raise Unsupported(
                f"layer {fqn!r} is a {type(module).__name__}, not a torch.nn layer (models loaded from "
                "torch.export archives have none); give a checkpoint or a module"
            )
        return fqn, module

    def tracked(self, args: Sequence[Any]) -> list[ChannelMap]:
        found = []
        for a in args:
            if isinstance(a, (list, tuple)):
                found += self.tracked(a)
            elif isinstance(a, torch.fx.Node) and isinstance(self.maps.get(a), ChannelMap):
                found.append(self.maps[a])
            elif isinstance(a, torch.fx.Node) and isinstance(self.maps.get(a), tuple):
                found += [m for m in self.maps[a] if isinstance(m, ChannelMap)]
        return found

    def new_units(self, fqn: str, count: int, axis: int, consts: list[float | None]) -> ChannelMap:
        self.analysis.units.update((fqn, i) for i in range(count))
        return ChannelMap(axis, [frozenset({(fqn, i)}) for i in range(count)], consts)

    def consume(self, fqn: str, cmap: ChannelMap | None, axis: int, follower: bool = False) -> None:
        if cmap is None:
            return
        if cmap.axis != axis:
            self.analysis.pin(cmap.sources, f"{fqn} reads them along another axis")
            return
        self.analysis.uses.append(Use(fqn, cmap.sources, cmap.consts, follower))

    # --- visiting ----------------------------------------------------------------------------

    def visit(self, node: Any) -> None:
        if node.op == "output":
            self.analysis.pin(
                (s for m in self.tracked(node.args) for s in m.sources), "reaches the model output"
            )
            return
        if node.op != "call_function":
            return
        target, args = node.target, node.args
        inputs = self.tracked(args)
        shape = getattr(node.meta.get("val"), "shape", None)
        if target is _aten.linear.default:
            self.maps[node] = self.linear(node, args, shape)
        elif target is _aten.conv2d.default:
            self.maps[node] = self.conv(node, args)
        elif target is _aten.embedding.default:
            fqn, emb = self.owner(args[0])
            zero = (emb.weight.detach() == 0).all(0)
            self.maps[node] = self.new_units(
                fqn, emb.embedding_dim, len(shape) - 1, [0.0 if z else None for z in zero.tolist()]
            )
        elif target in RNN_OPS:
            self.maps[node] = self.rnn(node, args, shape)
        elif target is operator.getitem and isinstance(self.maps.get(args[0]), tuple):
            self.maps[node] = self.maps[args[0]][args[1]]
        elif (
            target is _aten.batch_norm.default or target is _aten._native_batch_norm_legit_no_training.default
        ):
            self.maps[node] = self.batch_norm(node, args)
        elif not inputs:
            self.maps[node] = None
        elif target in UNARY:
            self.maps[node] = self.unary(node, inputs[0])
        elif target in MOVES and len(inputs) == 1 and isinstance(args[0], torch.fx.Node):
            self.maps[node] = self.move(node, inputs[0])
        elif target in BINARY:
            self.maps[node] = self.binary(node, args)
        elif target is _aten.cat.default:
            self.maps[node] = self.cat(node, args)
        else:
            self.analysis.pin(
                (s for m in inputs for s in m.sources), f"used by {target}, which the analysis does not cover"
            )
            self.maps[node] = None

    def linear(self, node: Any, args: Sequence[Any], shape: Sequence[int]) -> ChannelMap:
        fqn, layer = self.owner(args[1])
        x = self.maps.get(args[0])
        self.consume(fqn, x, len(args[0].meta["val"].shape) - 1)
        return self.new_units(fqn, layer.out_features, len(shape) - 1, _row_consts(layer.weight, layer.bias))

    def conv(self, node: Any, args: Sequence[Any]) -> ChannelMap:
        fqn, layer = self.owner(args[1])
        x = self.maps.get(args[0])
        out = self.new_units(fqn, layer.out_channels, 1, _row_consts(layer.weight, layer.bias))
        if layer.groups != 1:
            self.analysis.pin(out.sources, f"{fqn} is a grouped convolution")
            if x is not None:
                self.analysis.pin(x.sources, f"{fqn} is a grouped convolution")
        else:
            self.consume(fqn, x, 1)
        return out

    def rnn(self, node: Any, args: Sequence[Any], shape: Any) -> tuple:
        fqn, layer = self.owner(args[2][0])
        x, hx = self.maps.get(args[0]), self.tracked([args[1]])
        if hx:
            self.analysis.pin((s for m in hx for s in m.sources), f"an initial state of {fqn} is computed")
        self.consume(fqn, x, len(args[0].meta["val"].shape) - 1)
        hidden, dirs = layer.hidden_size, 2 if layer.bidirectional else 1
        last = layer.num_layers - 1
        consts = [
            0.0 if rnn_unit_zero(layer, last, d, j) else None for d in range(dirs) for j in range(hidden)
        ]
        out = self.new_units(fqn, hidden * dirs, len(node.meta["val"][0].shape) - 1, consts)
        state = ChannelMap(-1, out.sources, [None] * len(consts))  # h_n / c_n mix layers: any use pins
        return (out, state, state)

    def batch_norm(self, node: Any, args: Sequence[Any]) -> ChannelMap | None:
        x = self.maps.get(args[0])
        if x is None:
            return None
        fqn, bn = self.owner(args[1])
        self.consume(fqn, x, 1, follower=True)
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias - bn.running_mean * scale).detach()
        consts = [None if c is None else float(c * scale[i] + shift[i]) for i, c in enumerate(x.consts)]
        return ChannelMap(x.axis, x.sources, consts)

    def unary(self, node: Any, x: ChannelMap) -> ChannelMap:
        values = torch.tensor([float("nan") if c is None else c for c in x.consts])
        if node.target is _aten.dropout.default:
            out = values
        else:
            out = node.target(values, *node.args[1:], **node.kwargs)
        consts = [None if c is None else float(v) for c, v in zip(x.consts, out.tolist(), strict=True)]
        return ChannelMap(x.axis, x.sources, consts)

    def move(self, node: Any, x: ChannelMap) -> ChannelMap | None:
        """Apply the op to a tensor holding each position's index; read back where they went."""
        in_shape = list(node.args[0].meta["val"].shape)
        view = [1] * len(in_shape)
        view[x.axis] = in_shape[x.axis]
        probe = (
            torch.arange(in_shape[x.axis], dtype=torch.float64).reshape(view).expand(in_shape).contiguous()
        )
        try:
            out = node.target(probe, *node.args[1:], **node.kwargs)
        except Exception:
            out = None
        ids = _channel_ids(out, len(x.sources)) if isinstance(out, torch.Tensor) else None
        if ids is None:
            self.analysis.pin(x.sources, f"{node.target} slices or mixes the channel axis")
            return None
        axis, order = ids
        keep_const = node.target is not _aten.sum.dim_IntList
        return ChannelMap(
            axis, [x.sources[i] for i in order], [x.consts[i] if keep_const else None for i in order]
        )

    def binary(self, node: Any, args: Sequence[Any]) -> ChannelMap | None:
        a, b = (self.maps.get(x) if isinstance(x, torch.fx.Node) else x for x in args[:2])
        out_rank = len(node.meta["val"].shape)
        maps = [m for m in (a, b) if isinstance(m, ChannelMap)]
        axes = {
            m.axis - len(arg.meta["val"].shape)
            for m, arg in ((a, args[0]), (b, args[1]))
            if isinstance(m, ChannelMap)
        }
        if len(axes) != 1 or (len(maps) == 2 and len(a.sources) != len(b.sources)):
            self.analysis.pin(
                (s for m in maps for s in m.sources), f"{node.target} aligns channels differently"
            )
            return None
        axis = out_rank + axes.pop()
        for other, arg in ((b, args[1]), (a, args[0])):  # an untracked tensor must broadcast over channels
            if other is None and isinstance(arg, torch.fx.Node):
                size = list(arg.meta["val"].shape)
                offset = len(size) - (out_rank - axis)
                if 0 <= offset < len(size) and size[offset] != 1:
                    self.analysis.pin(
                        (s for m in maps for s in m.sources), f"{node.target} with a per-channel tensor"
                    )
                    return None
        if len(maps) == 2:
            sources = [sa | sb for sa, sb in zip(a.sources, b.sources, strict=True)]
            consts = [
                None if ca is None or cb is None else BINARY[node.target](ca, cb)
                for ca, cb in zip(a.consts, b.consts, strict=True)
            ]
            return ChannelMap(axis, sources, consts)
        (m,) = maps
        scalar = args[1] if m is a else args[0]
        if isinstance(scalar, (int, float)):
            fn = BINARY[node.target]
            consts = [None if c is None else (fn(c, scalar) if m is a else fn(scalar, c)) for c in m.consts]
        else:
            consts = [None] * len(m.consts)
        return ChannelMap(axis, m.sources, consts)

    def cat(self, node: Any, args: Sequence[Any]) -> ChannelMap | None:
        parts, dim = args[0], args[1] if len(args) > 1 else 0
        rank = len(node.meta["val"].shape)
        dim = dim % rank
        maps = [self.maps.get(p) for p in parts]
        tracked = [m for m in maps if isinstance(m, ChannelMap)]
        if any(m.axis != dim for m in tracked):
            self.analysis.pin((s for m in tracked for s in m.sources), "concatenated along another axis")
            return None
        sources: list[frozenset[Unit]] = []
        consts: list[float | None] = []
        for part, m in zip(parts, maps, strict=True):
            if isinstance(m, ChannelMap):
                sources += m.sources
                consts += m.consts
            else:
                width = part.meta["val"].shape[dim]
                sources += [frozenset()] * width
                consts += [None] * width
        return ChannelMap(dim, sources, consts)


def _row_consts(weight: torch.Tensor, bias: torch.Tensor | None) -> list[float | None]:
    """The output of each unit whose incoming weights are all zero: its bias (or 0)."""
    zero = (weight.detach().flatten(1) == 0).all(1)
    b = bias.detach() if bias is not None else torch.zeros(len(zero))
    return [float(b[i]) if z else None for i, z in enumerate(zero.tolist())]


def _channel_ids(out: torch.Tensor, channels: int) -> tuple[int, list[int]] | None:
    """The output axis carrying the probe's channel ids and the id at each position along it,
    if every channel appears, in order, in equal contiguous blocks (reshape and flatten do this;
    slices, selects and reductions over the channel axis do not)."""
    for axis in range(out.dim()):
        first = out.movedim(axis, 0).reshape(out.shape[axis], -1)
        if not (first == first[:, :1]).all():
            continue
        ids = first[:, 0]
        if (ids != ids.round()).any():
            return None
        order = [int(i) for i in ids.tolist()]
        block = len(order) // channels if channels else 0
        expected = [i // block for i in range(len(order))] if block else []
        return (axis, order) if block and order == expected and len(order) == block * channels else None
    return None


def rnn_unit_zero(layer: nn.Module, layer_index: int, d: int, j: int) -> bool:
    """Is hidden unit j of layer ``layer_index``, direction d, always zero? (h_0 = 0 and the candidate is 0.)

    LSTM: c_t = f c + i g with g = tanh(W_g x + W_g h + b_g): zero g rows and biases give c = h = 0.
    GRU: h_t = (1 - z) n + z h with n = tanh(W_n x + b_in + r (W_n h + b_hn)): zero n rows and biases.
    RNN: h = act(W x + W h + b): zero rows and biases.
    """
    gates, hidden = RNN_GATES[type(layer)], layer.hidden_size
    suffix = f"_l{layer_index}" + ("_reverse" if d else "")
    gate = {4: 2, 3: 2, 1: 0}[gates]  # LSTM rows i, f, g, o; GRU r, z, n; RNN one gate
    row = gate * hidden + j
    tensors = [getattr(layer, f"weight_ih{suffix}")[row], getattr(layer, f"weight_hh{suffix}")[row]]
    if layer.bias:
        tensors += [
            getattr(layer, f"bias_ih{suffix}")[row : row + 1],
            getattr(layer, f"bias_hh{suffix}")[row : row + 1],
        ]
    return all(bool((t.detach() == 0).all()) for t in tensors)
