"""Iterative pruning with retraining, thresholds from each layer's weight spread.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
NIPS 2015 (arXiv:1506.02626). Each cycle prunes, per layer, the weights with
|w| < quality x std(W_layer), then retrains the survivors with the pruned weights held at zero;
several prune-retrain cycles beat one-shot pruning at the same sparsity. Dropout is reduced as
a layer thins: D_r = D_o sqrt(C_r / C_o), with C the layer's remaining connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks, layer_sparsity
from passes.common import check_selection, check_sparsity, select_weights
from passes.granularity import Granularity
from passes.schedules import geometric_sparsity
from passes.training import TrainArgs, train


@PASSES.register("iterative-prune")
@dataclass(frozen=True)
class IterativePrune(TrainArgs):
    """``cycles`` prune-retrain cycles. Each cycle's threshold is quality x std(W) per layer with
    one ``quality`` for all layers: given, or (0, the default) found by bisection so the cycle
    reaches its share of the target ``sparsity`` (1 - (1 - s)^(i / cycles) after cycle i).
    Each retraining runs ``epochs`` epochs (or ``steps``); see ``TrainArgs``."""

    name: ClassVar[str] = "iterative-prune"
    sparsity: float = 0.9
    cycles: int = 3
    quality: float = 0.0
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()
    rescale_dropout: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sparsity(self.sparsity)
        if not isinstance(self.cycles, int) or self.cycles < 1:
            raise ConfigError(f"cycles must be a positive integer; got {self.cycles!r}")
        if self.quality < 0:
            raise ConfigError(f"quality must be >= 0 (0: chosen to reach sparsity); got {self.quality!r}")
        check_selection(self)

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        granularity = Granularity.parse(self.granularity)
        weights = select_weights(state.module, self.layers)
        spread = {fqn: float(w.detach().std()) for fqn, w in weights.items()}
        dropout = DropoutRescaler(state.module) if self.rescale_dropout else None
        cycles = []
        for cycle in range(1, self.cycles + 1):
            weights = select_weights(state.module, self.layers)
            quality = self.quality or quality_for(
                weights,
                spread,
                granularity,
                state.masks,
                geometric_sparsity(cycle, self.cycles, self.sparsity),
            )
            masks = dict(state.masks)
            for fqn, w in weights.items():
                masks[fqn] = granularity.prune_below(w.detach(), quality * spread[fqn], state.masks.get(fqn))
            apply_masks(state.module, masks)
            state = state.replace(masks=masks)
            rates = dropout.rescale(masks) if dropout else {}
            state, summary = train(
                state, self, ctx, label=f"{self.name} {cycle}/{self.cycles}", pass_name=self.name
            )
            cycles.append(
                {
                    "cycle": cycle,
                    "quality": round(quality, 6),
                    "dropout": rates,
                    "sparsity": _sparsity(masks, weights),
                    "metric": summary["epochs"][-1]["metric"],
                    "training": summary,
                }
            )
        plot = {
            "title": "iterative-prune (Han 2015): prune-retrain cycles",
            "xlabel": "cycle",
            "ylabel": "sparsity",
            "series": {"sparsity": ([c["cycle"] for c in cycles], [c["sparsity"] for c in cycles])},
            "twin": {
                "ylabel": "validation metric after retraining",
                "series": {"metric": ([c["cycle"] for c in cycles], [c["metric"] for c in cycles])},
            },
        }
        changes = {
            "plots": [plot],
            "cycles": cycles,
            "layer_sparsity": {f: s for f, s in layer_sparsity(state.module).items() if f in weights},
        }
        return PassResult(state, changes)


def _sparsity(masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> float:
    kept = sum(int(masks[f].sum()) for f in weights)
    return round(1.0 - kept / sum(w.numel() for w in weights.values()), 6)


def quality_for(
    weights: Mapping[str, torch.Tensor],
    spread: Mapping[str, float],
    granularity: Granularity,
    old: Mapping[str, torch.Tensor],
    sparsity: float,
) -> float:
    """The quality whose thresholds quality x std(W) prune ``sparsity`` of all weights (bisection)."""

    def reached(quality: float) -> float:
        masks = {
            f: granularity.prune_below(w.detach(), quality * spread[f], old.get(f))
            for f, w in weights.items()
        }
        return _sparsity(masks, weights)

    low, high = 0.0, 1.0
    while reached(high) < sparsity and high < 1e6:
        high *= 2
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if reached(mid) < sparsity else (low, mid)
    return high


class DropoutRescaler:
    """D_r = D_o sqrt(C_r / C_o) for each dropout, with C the connections of the layer it feeds.

    The layer a dropout feeds is the next module with a weight matrix in registration order
    (``nn.Sequential`` and the usual ``__init__`` order put it there).
    """

    def __init__(self, module: nn.Module) -> None:
        self.pairs: list[tuple[nn.Dropout, str, float, int]] = []
        pending: list[nn.Dropout] = []
        for prefix, sub in module.named_modules():
            if isinstance(sub, nn.modules.dropout._DropoutNd):
                pending.append(sub)
                continue
            weight = getattr(sub, "weight", None)
            if pending and isinstance(weight, nn.Parameter) and weight.dim() >= 2:
                fqn = f"{prefix}.weight" if prefix else "weight"
                self.pairs += [(d, fqn, d.p, int(torch.count_nonzero(weight))) for d in pending]
                pending = []

    def rescale(self, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
        rates = {}
        for dropout, fqn, original, connections in self.pairs:
            if fqn in masks:
                dropout.p = original * (int(masks[fqn].sum()) / connections) ** 0.5
                rates[fqn] = round(dropout.p, 6)
        return rates
