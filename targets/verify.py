"""Numerical verification of a lowered artifact against the torch model it came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from compressor.errors import VerificationError
from compressor.state import State


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
    generator = torch.Generator().manual_seed(seed)
    worst, tolerance = 0.0, atol
    for trial in range(trials + 1):
        inputs = state.example_inputs if trial == 0 else fresh_inputs(state.example_inputs, generator)
        expected = state.reference_outputs(inputs)
        got = run([t.numpy() for t in inputs])
        if len(got) != len(expected):
            raise VerificationError(f"artifact returned {len(got)} outputs, the torch model {len(expected)}")
        for want, have in zip(expected, got, strict=True):
            want = want.numpy()
            if have.shape != want.shape:
                raise VerificationError(
                    f"artifact output shape {have.shape} differs from torch's {want.shape}"
                )
            error = float(np.max(np.abs(have.astype(np.float64) - want))) if want.size else 0.0
            if not np.isfinite(error):
                error = float("inf")
            limit = atol + rtol * float(np.max(np.abs(want))) if want.size else atol
            worst, tolerance = max(worst, error), max(tolerance, limit)
            if error > limit:
                raise VerificationError(
                    f"artifact output differs from the torch model by {error:.3g} (tolerance "
                    f"{limit:.3g}); the lowering is wrong, so no latency is reported for it"
                )
    return Verification(trials + 1, worst, tolerance)
