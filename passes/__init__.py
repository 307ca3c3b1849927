"""Transformations of a model, one module per method; importing registers them as passes."""

from passes.agp_prune import AGPPrune
from passes.dead_neurons import RemoveDeadNeurons
from passes.dsd import DSD
from passes.gradual_prune import GradualPrune
from passes.granularity import Granularity
from passes.iterative_prune import IterativePrune
from passes.magnitude_prune import MagnitudePrune
from passes.retrain import Retrain
from passes.sensitivity import Sensitivity
from passes.structured_prune import StructuredPrune
from passes.training import TrainArgs

__all__ = [
    "DSD",
    "AGPPrune",
    "GradualPrune",
    "Granularity",
    "IterativePrune",
    "MagnitudePrune",
    "RemoveDeadNeurons",
    "Retrain",
    "Sensitivity",
    "StructuredPrune",
    "TrainArgs",
]
