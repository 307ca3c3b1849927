"""Numerical verification of a lowered artifact against the torch model it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from compressor.checks import describe_input, nonfinite_hint
from compressor.errors import ModelLoadError, VerificationError
from compressor.inputs import trial_inputs as _trial_inputs
from compressor.state import State
from targets.runtime.check import compare


@dataclass(frozen=True)
class Verification:
    trials: int
    max_abs_error: float
    tolerance: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def trial_inputs(state: State, trials: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs, then ``trials`` fresh random ones (``compressor.inputs``)."""
    return _trial_inputs(state.module, state.example_inputs, trials, seed)


def verify(
    run_all: Callable[[list[list[np.ndarray]]], list[list[np.ndarray]]],
    state: State,
    trials: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> Verification:
    """Run the example inputs and ``trials`` fresh random inputs through both (``run_all`` takes
    every case at once: the artifact may be loaded in a worker process); raise on mismatch.

    The tolerance is ``atol + rtol * max|reference|`` over each trial's outputs. A reference
    output that is not finite is the model's fault (``ModelLoadError``), not the lowering's.
    """
    worst, tolerance = 0.0, atol
    cases = trial_inputs(state, trials, seed)
    references = []
    for trial, inputs in enumerate(cases):
        expected = [t.numpy() for t in state.reference_outputs(inputs)]
        for index, want in enumerate(expected):
            if want.dtype.kind == "f" and not np.isfinite(want).all():
                raise ModelLoadError(
                    f"the torch model's output {index} is not finite on {describe_input(trial)} "
                    f"({nonfinite_hint(state.module)}); it cannot be verified: fix the model"
                )
        references.append(expected)
    outputs = run_all([[t.numpy() for t in inputs] for inputs in cases])
    for trial, (expected, got) in enumerate(zip(references, outputs, strict=True)):
        error, limit, problem = compare(expected, got, atol, rtol)
        if problem:
            raise VerificationError(
                f"{problem} on {describe_input(trial)}; the lowering is wrong: no latency is reported for it"
            )
        worst, tolerance = max(worst, error), max(tolerance, limit)
    if not np.isfinite(worst):  # compare() never lets one through; a report must never show it
        raise VerificationError(f"verification measured a non-finite error ({worst})")
    return Verification(trials + 1, worst, tolerance)
