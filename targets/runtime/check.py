"""Comparing an artifact's outputs with the reference ones (numpy only: runs on devices too)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compare(
    expected: Sequence[np.ndarray], got: Sequence[np.ndarray], atol: float, rtol: float
) -> tuple[float, float, str | None]:
    """Worst absolute error, its tolerance ``atol + rtol * max|expected|``, and a problem or None."""
    if len(got) != len(expected):
        return float("inf"), atol, f"artifact returned {len(got)} outputs, the torch model {len(expected)}"
    worst, tolerance = 0.0, atol
    for want, have in zip(expected, got, strict=True):
        have = np.asarray(have)
        if have.shape != want.shape:
            return float("inf"), atol, f"artifact output shape {have.shape} differs from torch's {want.shape}"
        error = float(np.max(np.abs(have.astype(np.float64) - want))) if want.size else 0.0
        if not np.isfinite(error):
            error = float("inf")
        limit = atol + rtol * float(np.max(np.abs(want))) if want.size else atol
        worst, tolerance = max(worst, error), max(tolerance, limit)
        if error > limit:
            return (
                worst,
                tolerance,
                (f"artifact output differs from the torch model by {error:.3g} (tolerance {limit:.3g})"),
            )
    return worst, tolerance, None
