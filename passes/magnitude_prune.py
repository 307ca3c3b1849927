"""One-shot magnitude pruning.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
NIPS 2015 (arXiv:1506.02626): connections with the smallest |w| matter least; remove them.
Retraining and the iterative schedule are other passes; this one only prunes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks, layer_sparsity
from passes.common import check_selection, check_sparsity, matching, select_weights
from passes.granularity import MAX_LAYER_SPARSITY, Granularity, global_masks

SCOPES = ("global", "layer")


@PASSES.register("magnitude-prune")
@dataclass(frozen=True)
class MagnitudePrune:
    """Zero the lowest-|w| weights (or blocks, N:M runs, rows) until ``sparsity`` is reached.

    ``scope="global"`` ranks all selected weights together (layers end up with different
    sparsities); ``scope="layer"`` prunes each layer to ``sparsity``. ``sparsities`` gives
    per-layer values that override either (fqn or glob pattern -> sparsity). ``layers`` limits
    the pass to weights whose fqn matches one of the glob patterns (default: every weight
    matrix; biases and norms are never pruned). Weights already masked stay masked.
    """

    name: ClassVar[str] = "magnitude-prune"
    sparsity: float = 0.5
    scope: str = "global"
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()
    sparsities: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        check_selection(self)
        for pattern, value in self.sparsities.items():
            check_sparsity(value, f"sparsity of {pattern!r}")

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        weights = select_weights(state.module, self.layers)
        granularity = Granularity.parse(self.granularity)
        masks = dict(state.masks)
        pooled = {}
        for fqn, w in weights.items():
            target = matching(fqn, self.sparsities)
            if target is None and self.scope == "layer":
                target = self.sparsity
            if target is None:
                pooled[fqn] = w
            else:
                masks[fqn] = granularity.prune_to(w, target, state.masks.get(fqn))
        if pooled:
            masks.update(global_masks(pooled, self.sparsity, granularity, state.masks))
        apply_masks(state.module, masks)
        changed = {fqn: s for fqn, s in layer_sparsity(state.module).items() if fqn in weights}
        changes: dict[str, object] = {"layer_sparsity": changed}
        capped = sorted(fqn for fqn in pooled if changed[fqn] >= MAX_LAYER_SPARSITY - 1e-3)
        if capped:  # the rest of their share went to the other layers
            changes["capped"] = {"at": MAX_LAYER_SPARSITY, "layers": capped}
        return PassResult(state.replace(masks=masks), changes)
