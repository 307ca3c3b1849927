"""Gradual pruning during training with a monotonically rising threshold.

Narang, Elsen, Diamos, Sengupta, "Exploring Sparsity in Recurrent Neural Networks", ICLR 2017
(arXiv:1704.05119). Each weight has a mask; after optimizer steps at ``freq`` intervals between
``start_itr`` and ``end_itr``, weights with |w| below the current threshold ε (see
``schedules.narang_threshold``) are masked. The paper lets gradients keep updating every
weight, so a pruned weight returns if it grows past ε (``revive=True``); ``revive=False`` makes
the mask permanent. Recurrent and linear weight matrices are pruned, never biases or norms.
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
from passes.schedules import narang_start_slope, narang_threshold
from passes.training import TrainArgs, total_steps, train


@PASSES.register("gradual-prune")
@dataclass(frozen=True)
class GradualPrune(TrainArgs):
    """Train while pruning with Narang's six hyper-parameters.

    ``start_itr``/``ramp_itr``/``end_itr`` (default: 0, 30% and 75% of the training steps),
    ``start_slope`` θ and ``ramp_slope`` φ (0: chosen per layer), ``freq``. Without θ, it comes
    from the paper's heuristic on q, the 90th percentile of the layer's |w| when pruning
    starts — or, when ``sparsity`` is given, θ is chosen per layer so that the final threshold
    equals that quantile of |w|, and at ``end_itr`` any shortfall is pruned by magnitude so the
    requested sparsity is met. φ defaults to 1.5 θ. After ``end_itr`` masks are frozen and
    training goes on under them. Training settings: see ``TrainArgs``.
    """

    name: ClassVar[str] = "gradual-prune"
    sparsity: float | None = None
    start_itr: int | None = None
    ramp_itr: int | None = None
    end_itr: int | None = None
    start_slope: float = 0.0
    ramp_slope: float = 0.0
    freq: int = 10
    revive: bool = True
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        for name in ("start_itr", "ramp_itr", "end_itr"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be a non-negative integer; got {value!r}")
        if not isinstance(self.freq, int) or self.freq < 1:
            raise ConfigError(f"freq must be a positive integer; got {self.freq!r}")
        if self.start_slope < 0 or self.ramp_slope < 0:
            raise ConfigError("start_slope and ramp_slope must be >= 0 (0: chosen per layer)")
        check_selection(self)

    def iterations(self, total: int) -> tuple[int, int, int]:
        """(start_itr, ramp_itr, end_itr), defaults filled in from the number of training steps."""
        start = self.start_itr if self.start_itr is not None else 0
        end = self.end_itr if self.end_itr is not None else max(start + 1, int(0.75 * total))
        ramp = self.ramp_itr if self.ramp_itr is not None else start + int(0.4 * (end - start))
        if not start <= ramp < end:
            raise ConfigError(f"need start_itr <= ramp_itr < end_itr; got {start}, {ramp}, {end}")
        if end > total:
            raise ConfigError(f"end_itr {end} is beyond the {total} training steps; train longer or lower it")
        return start, ramp, end

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state = state.clone()
        start, ramp, end = self.iterations(total_steps(state, self, self.name))
        weights = select_weights(state.module, self.layers)
        masks = dict(state.masks)
        for fqn, w in weights.items():
            masks.setdefault(fqn, torch.ones_like(w, dtype=torch.bool))
        hook = NarangHook(self, tuple(weights), (start, ramp, end), dict(state.masks))
        state, summary = train(
            state.replace(masks=masks), self, ctx, hook, label=self.name, pass_name=self.name
        )
        changes = {
            "iterations": {"start_itr": start, "ramp_itr": ramp, "end_itr": end},
            "slopes": hook.slopes,
            "layer_sparsity": {f: s for f, s in layer_sparsity(state.module).items() if f in weights},
            "training": summary,
            "plots": [hook.plot()],
        }
        return PassResult(state, changes)


class NarangHook:
    """Masks weights below the layer's threshold at each update iteration."""

    def __init__(
        self,
        spec: GradualPrune,
        fqns: tuple[str, ...],
        iterations: tuple[int, int, int],
        prior: Mapping[str, torch.Tensor],
    ) -> None:
        self.spec, self.fqns, self.prior = spec, fqns, prior
        self.start, self.ramp, self.end = iterations
        self.revive = spec.revive
        self.granularity = Granularity.parse(spec.granularity)
        self.slopes: dict[str, tuple[float, float]] = {}
        self.trace: list[tuple[int, float]] = []

    def final(self, step: int) -> bool:
        return step >= self.end - 1

    def threshold(self, fqn: str, step: int) -> float:
        theta, phi = self.slopes[fqn]
        return narang_threshold(
            step,
            start_itr=self.start,
            ramp_itr=self.ramp,
            end_itr=self.end,
            start_slope=theta,
            ramp_slope=phi,
            freq=self.spec.freq,
        )

    def update(self, step: int, params: Mapping[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> bool:
        scheduled = self.start <= step < self.end and step % self.spec.freq == 0
        top_up = step == self.end - 1 and self.spec.sparsity is not None
        if not (scheduled or top_up):
            return False
        if not self.slopes:
            self.slopes = {fqn: self._slopes(params[fqn]) for fqn in self.fqns}
        for fqn in self.fqns:
            weight = params[fqn].detach()
            if scheduled:
                old = self.prior.get(fqn) if self.revive else masks[fqn]
                masks[fqn] = self.granularity.prune_below(weight, self.threshold(fqn, step), old)
            if top_up:  # prune any shortfall against the requested sparsity by magnitude
                masks[fqn] = self.granularity.prune_to(weight, self.spec.sparsity, masks[fqn])
        kept = sum(int(masks[f].sum()) for f in self.fqns)
        self.trace.append((step, 1.0 - kept / sum(masks[f].numel() for f in self.fqns)))
        return True

    def _slopes(self, weight: torch.Tensor) -> tuple[float, float]:
        """(θ, φ) for one layer, from the weights as they are when pruning starts."""
        scores = self.granularity.group_scores(weight).flatten()
        ratio = (
            self.spec.ramp_slope / self.spec.start_slope
            if self.spec.start_slope and self.spec.ramp_slope
            else 1.5
        )
        if self.spec.start_slope:
            theta = self.spec.start_slope
        elif self.spec.sparsity is not None:
            # θ such that the final threshold equals the requested quantile of |w|.
            unit = narang_threshold(
                self.end - 1,
                start_itr=self.start,
                ramp_itr=self.ramp,
                end_itr=self.end,
                start_slope=1.0,
                ramp_slope=ratio,
                freq=self.spec.freq,
            )
            theta = float(torch.quantile(scores, self.spec.sparsity)) / unit
        else:
            q = float(torch.quantile(scores, 0.9))
            theta = narang_start_slope(
                q, freq=self.spec.freq, start_itr=self.start, ramp_itr=self.ramp, end_itr=self.end
            )
        return theta, (self.spec.ramp_slope or ratio * theta)

    def plot(self) -> dict:
        steps = list(range(0, self.end + max(1, (self.end - self.start) // 10)))
        series = {
            f"ε {fqn}": (steps, [self.threshold(fqn, s) for s in steps])
            for fqn in self.fqns
            if fqn in self.slopes
        }
        return {
            "title": "gradual-prune (Narang 2017): threshold per layer",
            "xlabel": "iteration",
            "ylabel": "threshold ε",
            "series": series,
            "twin": {
                "ylabel": "sparsity reached",
                "series": {"sparsity": ([s for s, _ in self.trace], [v for _, v in self.trace])},
            },
        }
