"""Dead-neuron removal: physically shrink layers whose units no longer matter.

Han et al. 2015 (arXiv:1506.02626): after pruning, neurons with zero input connections or zero
output connections are dead and are removed with their remaining connections. A unit (a Linear
row, a Conv2d output channel with its BatchNorm entries, an Embedding column, a hidden unit of
an LSTM/GRU/RNN in every layer and direction) is removed when

- every downstream column it feeds is zero (its output is unused), or
- its incoming weights are zero, so its output is a constant: zero, or a value folded into the
  biases of the layers that read it (exact only where they read it without padding).

Units the dependency analysis cannot follow, or that reach the model output, stay, and the
report says why. Dense runtimes (ONNX Runtime, cuBLAS) run the smaller layers faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from compressor.errors import PassError
from compressor.inputs import trial_inputs
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, set_eval
from passes.dependency import (
    OUTPUT,
    RNN_GATES,
    Analysis,
    Unit,
    Unsupported,
    analyse,
    directions,
    rnn_unit_zero,
    unit_count,
)


@dataclass
class Plan:
    """Indices to keep per module: output units, input columns, BatchNorm channels."""

    keep_out: dict[str, list[int]] = field(default_factory=dict)
    keep_in: dict[str, list[int]] = field(default_factory=dict)
    folds: dict[str, dict[int, float]] = field(default_factory=dict)  # consumer -> {column: constant}
    removed: dict[str, int] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # "fqn[unit]" -> reason


@PASSES.register("remove-dead-neurons")
@dataclass(frozen=True)
class RemoveDeadNeurons:
    """Remove dead units and everything coupled to them; outputs stay equal (checked)."""

    name: ClassVar[str] = "remove-dead-neurons"

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        work = state.clone()
        set_eval(work.module)
        try:
            analysis = analyse(work.module, work.example_inputs)
        except Unsupported as e:
            return PassResult(work, {"refused": str(e)})
        plan = make_plan(analysis)
        if not plan.removed:
            return PassResult(work, {"removed": {}, "kept": plan.kept})
        new, _ = apply_plan(work, plan, analysis)
        check_unchanged(state, new)
        return PassResult(new, {"removed": plan.removed, "kept": plan.kept, "folded": plan.folds})


def make_plan(analysis: Analysis) -> Plan:
    plan = Plan()
    groups: list[frozenset[Unit]] = []
    folds: dict[str, dict[int, float]] = {}
    for group in analysis.groups():
        pinned = [analysis.pinned[u] for u in group if u in analysis.pinned]
        verdict = _group_verdict(analysis, group)
        uncovered = [r for r in pinned if r != OUTPUT]
        if verdict is None and uncovered:  # cannot tell whether they are dead: say why
            for fqn in sorted({f for f, _ in group}):
                plan.kept.setdefault(fqn, f"not analysed: {uncovered[0]}")
        if verdict is None:
            continue
        if pinned or isinstance(verdict, str):
            reason = f"dead but kept: {pinned[0]}" if pinned else verdict
            for unit in sorted(group):
                plan.kept[f"{unit[0]}[{unit[1]}]"] = reason
            continue
        groups.append(group)
        for fqn, column, value in verdict:
            folds.setdefault(fqn, {})[column] = value
    # A layer whose every unit is dead has a constant output: it stays, and so do the units of
    # other layers coupled to its units (removing only one side of an add would break the add).
    whole = {
        fqn
        for fqn in analysis.modules
        if _dead_units(analysis.modules[fqn], fqn, set().union(*groups))
        == set(range(unit_count(analysis.modules[fqn])))
    }
    for fqn in whole:
        plan.kept[fqn] = "every unit is dead: the layer's output is constant; left as is"
    dead = set().union(*(g for g in groups if not any(f in whole for f, _ in g)))
    for fqn, module in analysis.modules.items():
        units = _dead_units(module, fqn, dead)
        if units:
            plan.keep_out[fqn] = [i for i in range(unit_count(module)) if i not in units]
            plan.removed[fqn] = len(units)
    removed = {
        (f, i)
        for f in plan.keep_out
        for i in range(_out_count(analysis.modules[f]))
        if _kept_index(analysis.modules[f], i) not in set(plan.keep_out[f])
    }
    for use in analysis.uses:
        keep = [p for p, units in enumerate(use.sources) if not (units and units <= removed)]
        if len(keep) < len(use.sources):
            if use.fqn in plan.keep_in and plan.keep_in[use.fqn] != keep:
                raise PassError(f"{use.fqn} is called on different inputs; its columns cannot be sliced once")
            plan.keep_in[use.fqn] = keep
    # Fold only the constants of columns that really go.
    for fqn, columns in folds.items():
        kept = set(plan.keep_in.get(fqn, range(len(next(u for u in analysis.uses if u.fqn == fqn).sources))))
        gone = {c: v for c, v in columns.items() if c not in kept}
        if gone:
            plan.folds[fqn] = gone
    return plan


def _dead_units(module: nn.Module, fqn: str, dead: set[Unit]) -> set[int]:
    """Indices of ``module``'s dead units; an RNN hidden unit counts when dead in every direction."""
    units = {i for f, i in dead if f == fqn}
    if isinstance(module, tuple(RNN_GATES)):
        hidden, dirs = module.hidden_size, range(directions(module))
        units = {j for j in range(hidden) if all(d * hidden + j in units for d in dirs)}
    return units


def _kept_index(module: nn.Module, i: int) -> int:
    """Output index i of an RNN is d * hidden + j: its unit is j."""
    return i % module.hidden_size if isinstance(module, tuple(RNN_GATES)) else i


def _group_verdict(analysis: Analysis, group: frozenset[Unit]) -> list[tuple[str, int, float]] | str | None:
    """How the group can go: a list of (consumer, column, constant) folds (empty: nothing to fold),
    a reason it cannot although it is dead, or None when it is alive."""
    positions = [
        (use, p)
        for use in analysis.uses
        if not use.follower
        for p, units in enumerate(use.sources)
        if units & group
    ]
    modules = {fqn for fqn, _ in group}
    rnns = [analysis.modules[f] for f in modules if isinstance(analysis.modules[f], tuple(RNN_GATES))]
    if rnns:
        return _rnn_verdict(analysis, group, positions)
    if not positions:
        return None if any(u in analysis.pinned for u in group) else []  # model outputs live; others unused
    if all(_column_zero(analysis.modules[use.fqn], p) for use, p in positions):
        return []  # unused output
    if any(use.consts[p] is None for use, p in positions):
        return None
    folds = []
    for use, p in positions:
        value = use.consts[p]
        if value == 0.0:
            continue
        consumer = analysis.modules[use.fqn]
        if not _can_fold(consumer):
            return (
                f"dead (constant {value:.3g}) but {use.fqn} cannot absorb it (no bias, padding or recurrence)"
            )
        folds.append((use.fqn, p, value))
    return folds


def _rnn_verdict(analysis: Analysis, group: frozenset[Unit], positions: list) -> list | str | None:
    """An RNN hidden unit j goes when, in every layer and direction, it is always zero or unused."""
    if len({f for f, _ in group}) != 1:
        return "an RNN hidden unit coupled with another layer's units (e.g. by an add)"
    fqn = next(iter(group))[0]
    layer = analysis.modules[fqn]
    hidden = layer.hidden_size
    j = next(iter(group))[1] % hidden
    for layer_index in range(layer.num_layers):
        for d in range(directions(layer)):
            suffix = f"_l{layer_index}" + ("_reverse" if d else "")
            if rnn_unit_zero(layer, layer_index, d, j):
                continue
            unused = bool((getattr(layer, f"weight_hh{suffix}")[:, j] == 0).all())
            if layer_index + 1 < layer.num_layers:
                for d2 in range(directions(layer)):
                    nxt = getattr(layer, f"weight_ih_l{layer_index + 1}" + ("_reverse" if d2 else ""))
                    unused &= bool((nxt[:, d * hidden + j] == 0).all())
            else:
                unused &= all(
                    _column_zero(analysis.modules[use.fqn], p)
                    for use, p in positions
                    if d * hidden + j in {i for f, i in use.sources[p]}
                )
            if not unused:
                return None
    return []


def _column_zero(consumer: nn.Module, column: int) -> bool:
    if isinstance(consumer, (nn.Linear, nn.Conv2d)):
        return bool((consumer.weight[:, column] == 0).all())
    if isinstance(consumer, tuple(RNN_GATES)):
        names = ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if consumer.bidirectional else [])
        return all(bool((getattr(consumer, n)[:, column] == 0).all()) for n in names)
    return False


def _can_fold(consumer: nn.Module) -> bool:
    if isinstance(consumer, nn.Linear):
        return consumer.bias is not None
    if isinstance(consumer, nn.Conv2d):
        return consumer.bias is not None and all(p == 0 for p in consumer.padding)  # type: ignore[union-attr]
    if isinstance(consumer, tuple(RNN_GATES)):
        return consumer.bias
    return False


def _out_count(module: nn.Module) -> int:
    """Output positions: units, times both directions for a bidirectional RNN."""
    return unit_count(module) * directions(module)


# --- applying a plan ---------------------------------------------------------------------------


def apply_plan(
    state: State, plan: Plan, analysis: Analysis
) -> tuple[State, dict[str, list[list[int] | None]]]:
    """Rebuild the sliced modules in place of the old ones (in ``state.module``); slice masks to
    match. Returns the new state and, per sliced parameter, the indices kept along each dim (for
    ``slice_optimizer``)."""
    module = state.module
    index: dict[str, list[list[int] | None]] = {}  # parameter fqn -> kept indices per dim
    followers = {u.fqn for u in analysis.uses if u.follower}
    _fold(module, plan.folds)
    names = set(plan.keep_out) | set(plan.keep_in) | followers
    for fqn in sorted(names):
        old = module.get_submodule(fqn)
        if fqn in followers:
            keep = plan.keep_in.get(fqn)
            if keep is None:
                continue
            new, slices = _slice_bn(old, keep)
        else:
            new, slices = _slice(old, plan.keep_out.get(fqn), plan.keep_in.get(fqn))
        _set_submodule(module, fqn, new)
        index.update({f"{fqn}.{name}": dims for name, dims in slices.items()})
    masks = {fqn: slice_like(mask, index[fqn]) if fqn in index else mask for fqn, mask in state.masks.items()}
    return state.replace(masks=masks), index


def slice_like(tensor: torch.Tensor, dims: list[list[int] | None]) -> torch.Tensor:
    """Keep the given indices along each dimension (None: all); masks and optimizer state alike."""
    for dim, keep in enumerate(dims):
        if keep is not None:
            tensor = tensor.index_select(dim, torch.tensor(keep, dtype=torch.long))
    return tensor


def slice_optimizer(
    optimizer: torch.optim.Optimizer,
    old: Mapping[str, nn.Parameter],
    new_module: nn.Module,
    index: Mapping[str, list[list[int] | None]],
) -> None:
    """Point ``optimizer`` at ``new_module``'s parameters, slicing per-parameter state (momentum,
    Adam moments, ...) the same way the parameters were sliced. Works for any optimizer whose
    state tensors have the parameter's shape."""
    new = dict(new_module.named_parameters())
    by_id = {id(p): fqn for fqn, p in old.items()}
    for group in optimizer.param_groups:
        for k, p in enumerate(group["params"]):
            fqn = by_id[id(p)]
            state = optimizer.state.pop(p, {})
            dims = index.get(fqn, [None] * p.dim())
            group["params"][k] = new[fqn]
            optimizer.state[new[fqn]] = {
                key: slice_like(v, dims) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                for key, v in state.items()
            }


def _fold(module: nn.Module, folds: Mapping[str, Mapping[int, float]]) -> None:
    """Add the contribution of removed constant columns to the consumer's bias."""
    with torch.no_grad():
        for fqn, columns in folds.items():
            layer = module.get_submodule(fqn)
            for column, value in columns.items():
                if isinstance(layer, nn.Linear):
                    layer.bias += layer.weight[:, column] * value
                elif isinstance(layer, nn.Conv2d):
                    layer.bias += layer.weight[:, column].sum((1, 2)) * value
                else:
                    for suffix in [""] + (["_reverse"] if layer.bidirectional else []):
                        getattr(layer, f"bias_ih_l0{suffix}").add_(
                            getattr(layer, f"weight_ih_l0{suffix}")[:, column] * value
                        )


def _slice(old: nn.Module, keep_out: list[int] | None, keep_in: list[int] | None) -> tuple[nn.Module, dict]:
    if isinstance(old, nn.Linear):
        out = keep_out or list(range(old.out_features))
        cols = keep_in or list(range(old.in_features))
        new = nn.Linear(len(cols), len(out), bias=old.bias is not None)
        return _copy(old, new, {"weight": [out, cols], "bias": [out]})
    if isinstance(old, nn.Conv2d):
        out = keep_out or list(range(old.out_channels))
        cols = keep_in or list(range(old.in_channels))
        new = nn.Conv2d(
            len(cols),
            len(out),
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )
        return _copy(old, new, {"weight": [out, cols, None, None], "bias": [out]})
    if isinstance(old, nn.Embedding):
        cols = keep_out or list(range(old.embedding_dim))
        new = nn.Embedding(old.num_embeddings, len(cols), padding_idx=old.padding_idx)
        return _copy(old, new, {"weight": [None, cols]})
    return _slice_rnn(old, keep_out, keep_in)


def _slice_rnn(
    old: nn.Module, keep_out: list[int] | None, keep_in: list[int] | None
) -> tuple[nn.Module, dict]:
    hidden, gates, dirs = old.hidden_size, RNN_GATES[type(old)], directions(old)
    units = keep_out or list(range(hidden))
    cols = keep_in or list(range(old.input_size))
    rows = [g * hidden + j for g in range(gates) for j in units]
    between = [d * hidden + j for d in range(dirs) for j in units]
    extra = {"nonlinearity": old.nonlinearity} if isinstance(old, nn.RNN) else {}
    new = type(old)(
        len(cols),
        len(units),
        num_layers=old.num_layers,
        bias=old.bias,
        batch_first=old.batch_first,
        dropout=old.dropout,
        bidirectional=old.bidirectional,
        **extra,
    )
    dims = {}
    for layer_index in range(old.num_layers):
        for d in range(dirs):
            s = f"_l{layer_index}" + ("_reverse" if d else "")
            dims[f"weight_ih{s}"] = [rows, cols if layer_index == 0 else between]
            dims[f"weight_hh{s}"] = [rows, units]
            if old.bias:
                dims[f"bias_ih{s}"] = [rows]
                dims[f"bias_hh{s}"] = [rows]
    return _copy(old, new, dims)


def _slice_bn(old: nn.Module, keep: list[int]) -> tuple[nn.Module, dict]:
    new = type(old)(
        len(keep),
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
    )
    dims = {n: [keep] for n in ("weight", "bias") if getattr(old, n, None) is not None}
    new, slices = _copy(old, new, dims)
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            if getattr(old, name, None) is not None:
                getattr(new, name).copy_(getattr(old, name)[keep])
        if getattr(old, "num_batches_tracked", None) is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new, slices


def _copy(old: nn.Module, new: nn.Module, dims: dict[str, list[list[int] | None]]) -> tuple[nn.Module, dict]:
    with torch.no_grad():
        for name, keep in dims.items():
            getattr(new, name).copy_(slice_like(getattr(old, name).detach(), keep))
    new.train(old.training)
    if hasattr(new, "flatten_parameters"):
        new.flatten_parameters()
    return new, dims


def _set_submodule(root: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, name = fqn.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def check_unchanged(before: State, after: State, trials: int = 3) -> None:
    """Outputs must not change: a removal the analysis got wrong is an error, never a model."""
    for inputs in trial_inputs(before.module, before.example_inputs, trials - 1):
        for want, have in zip(before.reference_outputs(inputs), after.reference_outputs(inputs), strict=True):
            if want.shape != have.shape or not torch.allclose(want, have, rtol=1e-4, atol=1e-5):
                raise PassError(
                    "removing dead neurons changed the model's outputs; this model is not covered"
                )
