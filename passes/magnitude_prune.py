"""One-shot magnitude pruning.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
NIPS 2015 (arXiv:1506.02626): connections with the smallest |w| matter least; remove them.
Retraining and the iterative schedule come from the retrain pass; this pass only prunes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import ClassVar

import torch

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks, layer_sparsity, prunable_weights

SCOPES = ("global", "layer")


def check_sparsity(value: object, what: str = "sparsity") -> float:
    """A sparsity is a fraction of zeros in [0, 1): 1.0 would remove every weight."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1), e.g. 0.9 for 90% zeros; got {value!r}")
    return float(value)


def smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A bool mask of ``scores``' shape, True at exactly ``count`` smallest entries."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        out[torch.topk(scores.flatten(), count, largest=False, sorted=False).indices] = True
    return out.view_as(scores)


@PASSES.register("magnitude-prune")
@dataclass(frozen=True)
class MagnitudePrune:
    """Zero the smallest-|w| weights until the requested sparsity is reached.

    ``scope="global"`` ranks all selected weights together (layers end up with different
    sparsities); ``scope="layer"`` prunes each layer to ``sparsity``. ``sparsities`` gives
    per-layer values that override either (fqn or glob pattern -> sparsity). ``layers`` limits
    the pass to weights whose fqn matches one of the glob patterns (default: every weight
    matrix; biases and norms are never pruned). Weights already masked stay masked.
    """

    name: ClassVar[str] = "magnitude-prune"
    sparsity: float = 0.5
    scope: str = "global"
    layers: tuple[str, ...] = ()
    sparsities: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        for pattern, value in self.sparsities.items():
            check_sparsity(value, f"sparsity of {pattern!r}")

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        weights = {
            fqn: w
            for fqn, w in prunable_weights(state.module).items()
            if not self.layers or any(fnmatch(fqn, pat) for pat in self.layers)
        }
        if not weights:
            raise ConfigError(f"no prunable weights match layers={list(self.layers)}")
        # Already-pruned weights score -1 so they are counted first and never revived.
        scores = {fqn: self._scores(w, state.masks.get(fqn)) for fqn, w in weights.items()}
        targets = {fqn: self._layer_target(fqn) for fqn in weights}
        masks = dict(state.masks)
        by_layer = {fqn: s for fqn, s in targets.items() if s is not None}
        for fqn, target in by_layer.items():
            masks[fqn] = self._keep(state, fqn, ~smallest(scores[fqn], round(target * scores[fqn].numel())))
        pooled = [fqn for fqn in weights if fqn not in by_layer]
        if pooled:
            flat = torch.cat([scores[fqn].flatten() for fqn in pooled])
            pruned = smallest(flat, round(self.sparsity * flat.numel()))
            for fqn, part in zip(pooled, pruned.split([scores[f].numel() for f in pooled]), strict=True):
                masks[fqn] = self._keep(state, fqn, ~part.view_as(scores[fqn]))
        apply_masks(state.module, masks)
        changed = {fqn: s for fqn, s in layer_sparsity(state.module).items() if fqn in weights}
        return PassResult(state.replace(masks=masks), {"layer_sparsity": changed})

    def _layer_target(self, fqn: str) -> float | None:
        for pattern, value in self.sparsities.items():
            if fnmatch(fqn, pattern):
                return value
        return self.sparsity if self.scope == "layer" else None

    @staticmethod
    def _keep(state: State, fqn: str, keep: torch.Tensor) -> torch.Tensor:
        old = state.masks.get(fqn)
        return keep if old is None else keep & old

    @staticmethod
    def _scores(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = weight.detach().abs().float()
        return scores if mask is None else torch.where(mask, scores, torch.full_like(scores, -1.0))
