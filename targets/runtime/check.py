"""Comparing an artifact's outputs with the reference ones (numpy only: runs on devices too)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compare(
    expected: Sequence[np.ndarray], got: Sequence[np.ndarray], atol: float, rtol: float
) -> tuple[float, float, str | None]:
    """Worst absolute error, its tolerance ``atol + rtol * max|expected|``, and a problem or None.

    A non-finite value is a problem wherever it is: in the artifact's output (a NaN compares as
    nothing and an inf makes every tolerance pass), or in the reference (the model's fault)."""
    if len(got) != len(expected):
        return float("inf"), atol, f"artifact returned {len(got)} outputs, the torch model {len(expected)}"
    worst, tolerance = 0.0, atol
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        have = np.asarray(have)
        if have.shape != want.shape:
            return float("inf"), atol, f"artifact output shape {have.shape} differs from torch's {want.shape}"
        if not want.size:
            continue
        if not np.isfinite(want).all():
            return float("inf"), atol, f"the torch model's output {index} is not finite"
        if not np.isfinite(have).all():
            kind = "NaN" if np.isnan(have).any() else "inf"
            return (
                float("inf"),
                tolerance,
                f"artifact output {index} holds {kind} where the torch model's is finite",
            )
        error = float(np.max(np.abs(have.astype(np.float64) - want)))
        limit = atol + rtol * float(np.max(np.abs(want)))
        worst, tolerance = max(worst, error), max(tolerance, limit)
        if error > limit:
            problem = (
                f"artifact output {index} differs from the torch model by {error:.3g} (tolerance {limit:.3g})"
            )
            return worst, tolerance, problem
    return worst, tolerance, None
