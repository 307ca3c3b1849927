"""Structured pruning of whole units: Linear rows, Conv2d channels, Embedding columns, RNN hidden units.

The lowest-norm units of each layer are masked entirely: their incoming weights and every column
that reads them downstream (found by the dependency analysis), so ``remove-dead-neurons`` then
removes them and dense runtimes get smaller matrices (survey of RNN compression, seed 003:
structured pruning is what dense runtimes turn into speed). An RNN hidden unit is scored over
all its gate rows in every layer and direction, and goes from all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import ClassVar

import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks, set_eval
from passes.common import check_sparsity
from passes.dependency import RNN_GATES, Analysis, Unit, Unsupported, analyse, directions, unit_count

NORMS = ("l1", "l2")


@PASSES.register("structured-prune")
@dataclass(frozen=True)
class StructuredPrune:
    """Mask ``sparsity`` of the units of each layer whose module fqn matches ``layers`` (glob
    patterns; default every Linear, Conv2d, Embedding and RNN layer), lowest ``norm`` first.
    Units the analysis pins (model outputs, uncovered ops) and coupled groups are left alone."""

    name: ClassVar[str] = "structured-prune"
    sparsity: float = 0.5
    norm: str = "l2"
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        set_eval(state.module)
        try:
            analysis = analyse(state.module, state.example_inputs)
        except Unsupported as e:
            raise ConfigError(f"structured-prune cannot analyse the model: {e}") from None
        candidates: dict[str, list[frozenset[Unit]]] = {}
        for group in analysis.groups():
            fqns = {f for f, _ in group}
            if len(fqns) != 1 or group & analysis.pinned.keys():
                continue
            (fqn,) = fqns
            if not self.layers or any(fnmatch(fqn, p) for p in self.layers):
                candidates.setdefault(fqn, []).append(group)
        if not candidates:
            raise ConfigError(f"no prunable units in layers matching {list(self.layers) or 'any'}")
        params = dict(state.module.named_parameters())
        masks = {fqn: m.clone() for fqn, m in state.masks.items()}
        pruned = {}
        for fqn, groups in candidates.items():
            module = analysis.modules[fqn]
            count = min(math.floor(self.sparsity * unit_count(module)), len(groups))
            scores = torch.stack([self._score(fqn, module, g) for g in groups])
            for k in scores.argsort()[:count].tolist():
                for name, index in _unit_slices(analysis, fqn, module, groups[k]):
                    mask = masks.setdefault(name, torch.ones_like(params[name], dtype=torch.bool))
                    mask[index] = False
            pruned[fqn] = count
        apply_masks(state.module, masks)
        return PassResult(state.replace(masks=masks), {"units_pruned": pruned})

    def _score(self, fqn: str, module: nn.Module, group: frozenset[Unit]) -> torch.Tensor:
        rows = [w[index].detach().flatten() for w, index in _incoming(fqn, module, group)]
        values = torch.cat(rows)
        return values.abs().sum() if self.norm == "l1" else values.norm()


def _incoming(fqn: str, module: nn.Module, group: frozenset[Unit]) -> list[tuple[torch.Tensor, tuple]]:
    """(parameter, index) pairs holding the unit's own weights."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        (unit,) = group
        return [(module.weight, (unit[1],))]
    if isinstance(module, nn.Embedding):
        (unit,) = group
        return [(module.weight, (slice(None), unit[1]))]
    hidden, gates = module.hidden_size, RNN_GATES[type(module)]
    j = next(iter(group))[1] % hidden
    rows = [g * hidden + j for g in range(gates)]
    out = []
    for name, w in module.named_parameters():
        if name.startswith("weight_"):
            out.append((w, (rows,)))
    return out


def _unit_slices(
    analysis: Analysis, fqn: str, module: nn.Module, group: frozenset[Unit]
) -> list[tuple[str, tuple]]:
    """(parameter fqn, index) pairs to mask: the unit's incoming weights and every column that
    reads it (downstream layers; for an RNN also its recurrent and next-layer columns)."""
    out = []
    if isinstance(module, tuple(RNN_GATES)):
        hidden, gates, dirs = module.hidden_size, RNN_GATES[type(module)], directions(module)
        j = next(iter(group))[1] % hidden
        rows = [g * hidden + j for g in range(gates)]
        for layer in range(module.num_layers):
            for d in range(dirs):
                s = f"_l{layer}" + ("_reverse" if d else "")
                out += [
                    (f"{fqn}.weight_ih{s}", (rows,)),
                    (f"{fqn}.weight_hh{s}", (rows,)),
                    (f"{fqn}.weight_hh{s}", (slice(None), j)),
                ]
                if layer > 0:
                    out += [(f"{fqn}.weight_ih{s}", (slice(None), [e * hidden + j for e in range(dirs)]))]
    elif isinstance(module, nn.Embedding):
        out.append((f"{fqn}.weight", (slice(None), next(iter(group))[1])))
    else:
        out.append((f"{fqn}.weight", (next(iter(group))[1],)))
    for use in analysis.uses:
        if use.follower:
            continue
        columns = [p for p, units in enumerate(use.sources) if units and units <= group]
        if not columns:
            continue
        consumer = analysis.modules[use.fqn]
        names = (
            ["weight"]
            if not isinstance(consumer, tuple(RNN_GATES))
            else (["weight_ih_l0"] + (["weight_ih_l0_reverse"] if consumer.bidirectional else []))
        )
        out += [(f"{use.fqn}.{n}", (slice(None), columns)) for n in names]
    return out
