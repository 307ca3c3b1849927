"""The engine: State, passes and pipelines, recipes, model I/O, the job, report and errors.

It knows nothing of a particular pass or target: those register themselves from the
``passes`` and ``targets`` packages.
"""

from compressor.data import Task, load_task
from compressor.errors import (
    BackendUnavailable,
    CompressorError,
    ConfigError,
    DataError,
    DeviceError,
    LoweringError,
    ModelLoadError,
    OutputError,
    PassError,
    VerificationError,
)
from compressor.job import Job, run_job
from compressor.modelio import load_model, save_checkpoint, save_exported
from compressor.pipeline import Pass, PassContext, PassResult, Pipeline, format_recipe
from compressor.recipe import load_recipe, parse
from compressor.registry import ARCHITECTURES, BACKENDS, PASSES, TARGETS, Registry
from compressor.state import PassRecord, State

__all__ = [
    "ARCHITECTURES",
    "BACKENDS",
    "BackendUnavailable",
    "PASSES",
    "TARGETS",
    "CompressorError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "Job",
    "LoweringError",
    "ModelLoadError",
    "OutputError",
    "Pass",
    "PassContext",
    "PassError",
    "PassRecord",
    "PassResult",
    "Pipeline",
    "Registry",
    "State",
    "Task",
    "VerificationError",
    "format_recipe",
    "load_model",
    "load_recipe",
    "load_task",
    "parse",
    "run_job",
    "save_checkpoint",
    "save_exported",
]
