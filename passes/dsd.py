"""Dense-Sparse-Dense training.

Han et al., "DSD: Dense-Sparse-Dense Training for Deep Neural Networks", ICLR 2017
(arXiv:1607.04381). S: per layer, mask the weights below the k-th largest |w|
(k = N (1 - sparsity)) and train under the mask; D: remove the mask, the pruned weights restart
at zero, and train the whole dense network at 1/10 of the learning rate. The result has the
original dense shape: DSD improves accuracy, not inference cost. (Taylor: near a minimum the
loss increase from zeroing w_i grows with w_i^2, so the smallest |w| go.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.errors import ConfigError
from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State, apply_masks
from passes.common import check_selection, check_sparsity, select_weights
from passes.granularity import Granularity
from passes.training import TrainArgs, train


@PASSES.register("dsd")
@dataclass(frozen=True)
class DSD(TrainArgs):
    """``dense_epochs`` of dense training first (0 for an already trained model), then the S and
    the final D phase, each ``epochs`` epochs (or ``steps`` steps); the final D phase runs at
    ``lr * redense_lr_ratio``. Masks from earlier passes stay; only DSD's own mask is removed."""

    name: ClassVar[str] = "dsd"
    sparsity: float = 0.3
    dense_epochs: int = 0
    redense_lr_ratio: float = 0.1
    granularity: str = "unstructured"
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sparsity(self.sparsity)
        if not isinstance(self.dense_epochs, int) or self.dense_epochs < 0:
            raise ConfigError(f"dense_epochs must be a non-negative integer; got {self.dense_epochs!r}")
        if not 0 < self.redense_lr_ratio <= 1:
            raise ConfigError(f"redense_lr_ratio must be in (0, 1]; got {self.redense_lr_ratio!r}")
        check_selection(self)

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state, prior = state.clone(), dict(state.masks)
        phases = {}
        if self.dense_epochs:
            dense = TrainArgs(**{**vars(self.train_args()), "epochs": self.dense_epochs, "steps": 0})
            state, phases["dense"] = train(state, dense, ctx, label="dsd: dense", pass_name=self.name)
        granularity = Granularity.parse(self.granularity)
        masks = dict(prior)
        for fqn, w in select_weights(state.module, self.layers).items():
            masks[fqn] = granularity.prune_to(w.detach(), self.sparsity, prior.get(fqn))
        apply_masks(state.module, masks)
        state, phases["sparse"] = train(
            state.replace(masks=masks), self, ctx, label="dsd: sparse", pass_name=self.name
        )
        # Re-dense: drop DSD's mask; pruned weights restart from zero (they are zero now).
        state = state.replace(masks=prior)
        state, phases["redense"] = train(
            state, self, ctx, lr=self.lr * self.redense_lr_ratio, label="dsd: re-dense", pass_name=self.name
        )
        return PassResult(state, {"training": phases, "plots": [self._plot(phases)]})

    def _plot(self, phases: dict) -> dict:
        """Sparsity of the pruned layers and the validation metric per epoch, phase by phase."""
        epochs, sparsity, metric = [], [], []
        for phase, summary in phases.items():
            for record in summary["epochs"]:
                epochs.append(len(epochs) + 1)
                sparsity.append(self.sparsity if phase == "sparse" else 0.0)
                metric.append(record["metric"])
        return {
            "title": "dsd (Han 2017): dense -> sparse -> dense",
            "xlabel": "epoch",
            "ylabel": "sparsity of DSD's mask",
            "series": {"sparsity": (epochs, sparsity)},
            "twin": {"ylabel": "validation metric", "series": {"metric": (epochs, metric)}},
        }
