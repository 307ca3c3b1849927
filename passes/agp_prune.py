"""Automated gradual pruning: sparsity follows a cubic schedule during training.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", 2017 (arXiv:1710.01878); the schedule is ``schedules.agp_sparsity``. Every
``freq`` steps each layer is pruned by magnitude to the scheduled sparsity; pruned weights stay
pruned.
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
from compressor.state import State, layer_sparsity
from passes.common import check_selection, check_sparsity, select_weights
from passes.granularity import Granularity
from passes.schedules import agp_sparsity
from passes.training import TrainArgs, total_steps, train


@PASSES.register("agp-prune")
@dataclass(frozen=True)
class AGPPrune(TrainArgs):
    """Train while each layer's sparsity rises from ``initial_sparsity`` to ``sparsity`` between
    ``start_step`` and ``end_step`` (default: 0 and 75% of the training steps), updated every
    ``freq`` steps; then train on under the final masks. Training settings: see ``TrainArgs``."""

    name: ClassVar[str] = "agp-prune"
    sparsity: float = 0.9
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int | None = None
    freq: int = 10
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sparsity(self.sparsity)
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        if not isinstance(self.freq, int) or self.freq < 1:
            raise ConfigError(f"freq must be a positive integer; got {self.freq!r}")
        check_selection(self)

    def steps_window(self, total: int) -> tuple[int, int]:
        end = self.end_step if self.end_step is not None else max(self.start_step + 1, int(0.75 * total))
        if not 0 <= self.start_step < end <= total:
            raise ConfigError(
                f"need 0 <= start_step < end_step <= {total} training steps; got {self.start_step}, {end}"
            )
        return self.start_step, end

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        start, end = self.steps_window(total_steps(state, self, self.name))
        weights = select_weights(state.module, self.layers)
        masks = dict(state.masks)
        for fqn, w in weights.items():
            masks.setdefault(fqn, torch.ones_like(w, dtype=torch.bool))
        hook = AGPHook(self, tuple(weights), start, end)
        state, summary = train(
            state.replace(masks=masks), self, ctx, hook, label=self.name, pass_name=self.name
        )
        steps = list(range(0, end + max(1, (end - start) // 10)))
        plot = {
            "title": "agp-prune (Zhu & Gupta 2017): sparsity schedule",
            "xlabel": "step",
            "ylabel": "sparsity",
            "series": {
                "scheduled": (steps, [self.schedule(s, start, end) for s in steps]),
                "reached": ([s for s, _ in hook.trace], [v for _, v in hook.trace]),
            },
        }
        changes = {
            "steps": {"start_step": start, "end_step": end},
            "layer_sparsity": {f: s for f, s in layer_sparsity(state.module).items() if f in weights},
            "training": summary,
            "plots": [plot],
        }
        return PassResult(state, changes)

    def schedule(self, step: int, start: int, end: int) -> float:
        return agp_sparsity(
            step, final=self.sparsity, initial=self.initial_sparsity, start=start, end=end, freq=self.freq
        )


class AGPHook:
    revive = False

    def __init__(self, spec: AGPPrune, fqns: tuple[str, ...], start: int, end: int) -> None:
        self.spec, self.fqns, self.start, self.end = spec, fqns, start, end
        self.granularity = Granularity.parse(spec.granularity)
        self.trace: list[tuple[int, float]] = []

    def final(self, step: int) -> bool:
        return step >= self.end

    def update(self, step: int, params: Mapping[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> bool:
        on_grid = (step - self.start) % self.spec.freq == 0 or step == self.end
        if step < self.start or step > self.end or not on_grid:
            return False
        target = self.spec.schedule(step, self.start, self.end)
        for fqn in self.fqns:
            masks[fqn] = self.granularity.prune_to(params[fqn].detach(), target, masks[fqn])
        kept = sum(int(masks[f].sum()) for f in self.fqns)
        self.trace.append((step, 1.0 - kept / sum(masks[f].numel() for f in self.fqns)))
        return True
