"""Sensitivity analysis: prune one layer at a time at several sparsities and record the metric.

Han et al. 2015 (arXiv:1506.02626), Fig. 6: layers differ in how much pruning they tolerate
(the first conv layer least, fully connected layers most); the curves pick per-layer sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks
from passes.common import check_sparsity, select_weights
from passes.granularity import Granularity
from passes.training import require_task


@PASSES.register("sensitivity")
@dataclass(frozen=True)
class Sensitivity:
    """Measure the validation metric with each layer alone pruned to each of ``sparsities``.

    With ``max_drop`` set (metric points, e.g. 0.5 accuracy points, or perplexity units), each
    layer then gets the highest tested sparsity whose metric is within ``max_drop`` of the
    unpruned model, and the model is pruned to those per-layer sparsities. Without it the model
    is left unchanged and only the table is recorded.
    """

    name: ClassVar[str] = "sensitivity"
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    max_drop: float | None = None
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsities", tuple(sorted(check_sparsity(s) for s in self.sparsities)))
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.sparsities:
            raise ConfigError("sparsities must list at least one sparsity")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"max_drop must be >= 0; got {self.max_drop!r}")
        Granularity.parse(self.granularity)

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        task = require_task(state, self.name)
        granularity = Granularity.parse(self.granularity)
        state = state.clone()
        baseline = task.evaluate(state.module)
        weights = select_weights(state.module, self.layers)
        table: dict[str, dict[float, float]] = {}
        bar = ctx.progress(self.name, len(weights) * len(self.sparsities))
        for fqn, w in weights.items():
            original = w.detach().clone()
            table[fqn] = {}
            for sparsity in self.sparsities:
                apply_masks(
                    state.module, {fqn: granularity.prune_to(original, sparsity, state.masks.get(fqn))}
                )
                table[fqn][sparsity] = task.evaluate(state.module)
                w.data.copy_(original)
                bar.update(1)
        bar.close()
        changes = {
            "baseline": baseline,
            "metric": task.metric,
            "table": table,
            "plots": [self._plot(table, baseline, task.metric)],
        }
        if self.max_drop is None:
            return PassResult(state, changes)
        drop = (lambda m: baseline - m) if task.higher_is_better else (lambda m: m - baseline)
        chosen = {
            fqn: max([0.0] + [s for s, m in row.items() if drop(m) <= self.max_drop])
            for fqn, row in table.items()
        }
        masks = dict(state.masks)
        for fqn, sparsity in chosen.items():
            if sparsity > 0:
                masks[fqn] = granularity.prune_to(weights[fqn].detach(), sparsity, state.masks.get(fqn))
        apply_masks(state.module, masks)
        return PassResult(state.replace(masks=masks), {**changes, "chosen": chosen})

    def _plot(self, table: dict[str, dict[float, float]], baseline: float, metric: str) -> dict:
        xs = [0.0, *self.sparsities]
        return {
            "title": "sensitivity: one layer pruned at a time",
            "xlabel": "sparsity of the layer",
            "ylabel": f"validation {metric}",
            "series": {fqn: (xs, [baseline, *row.values()]) for fqn, row in table.items()},
        }
