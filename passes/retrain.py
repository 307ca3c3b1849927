"""Retraining under fixed masks: the survivors learn to compensate for the pruned connections.

Han, Pool, Tran, Dally, NIPS 2015 (arXiv:1506.02626): fine-tune from the trained weights (never
re-initialise) with pruned weights held at zero, at a learning rate 1-2 orders below the
original initial rate, with L2 regularisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.pipeline import PassContext, PassResult
from compressor.registry import PASSES
from compressor.state import State
from passes.training import TrainArgs, train


@PASSES.register("retrain")
@dataclass(frozen=True)
class Retrain(TrainArgs):
    """Fine-tune on the state's task; masks hold pruned weights at zero (see ``TrainArgs``)."""

    name: ClassVar[str] = "retrain"

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        state, summary = train(state.clone(), self, ctx, label="retrain", pass_name=self.name)
        return PassResult(state, {"training": summary})


PASSES.register("finetune")(Retrain)
