"""Numerical verification of a lowered artifact against the torch model it came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from compressor.errors import VerificationError
from compressor.state import State
from targets.runtime.check import compare


@dataclass(frozen=True)
class Verification:
    trials: int
    max_abs_error: float
    tolerance: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def fresh_inputs(example: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like ``example``: normal floats, integers within the example's range."""
    out = []
    for t in example:
        if t.is_floating_point():
            out.append(torch.randn(t.shape, generator=generator).to(t.dtype))
        else:
            low, high = int(t.min()), int(t.max()) + 1
            out.append(torch.randint(low, high, t.shape, generator=generator, dtype=t.dtype))
    return tuple(out)


def trial_inputs(state: State, trials: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs, then ``trials`` fresh random ones (the same for the same ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return [state.example_inputs] + [fresh_inputs(state.example_inputs, generator) for _ in range(trials)]


def verify(
    run: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    state: State,
    trials: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> Verification:
    """Run the example inputs and ``trials`` fresh random inputs through both; raise on mismatch.

    The tolerance is ``atol + rtol * max|reference|`` over each trial's outputs.
    """
    worst, tolerance = 0.0, atol
    for inputs in trial_inputs(state, trials, seed):
        expected = [t.numpy() for t in state.reference_outputs(inputs)]
        error, limit, problem = compare(expected, run([t.numpy() for t in inputs]), atol, rtol)
        if problem:
            raise VerificationError(f"{problem}; the lowering is wrong, so no latency is reported for it")
        worst, tolerance = max(worst, error), max(tolerance, limit)
    return Verification(trials + 1, worst, tolerance)
