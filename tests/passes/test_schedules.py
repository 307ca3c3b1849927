"""Schedule formulas against values computed by hand."""

from __future__ import annotations

import pytest

from passes.schedules import agp_sparsity, geometric_sparsity, narang_start_slope, narang_threshold

NARANG = {"start_itr": 10, "ramp_itr": 30, "end_itr": 50, "start_slope": 0.2, "ramp_slope": 0.3, "freq": 5}


@pytest.mark.parametrize(
    "itr, expected",
    [
        (0, 0.0),  # before start_itr
        (9, 0.0),
        (10, 0.2 * 1 / 5),  # first update: θ (10 - 10 + 1) / 5
        (12, 0.2 * 1 / 5),  # 12 % 5 != 0: unchanged
        (15, 0.2 * 6 / 5),
        (25, 0.2 * 16 / 5),
        (29, 0.2 * 16 / 5),  # still the value set at 25
        (30, (0.2 * 21 + 0.3 * 1) / 5),  # ramp phase: (θ (30 - 10 + 1) + φ (30 - 30 + 1)) / 5
        (45, (0.2 * 21 + 0.3 * 16) / 5),
        (49, (0.2 * 21 + 0.3 * 16) / 5),
        (50, (0.2 * 21 + 0.3 * 16) / 5),  # frozen from end_itr on
        (10_000, (0.2 * 21 + 0.3 * 16) / 5),
    ],
)
def test_narang_threshold(itr: int, expected: float) -> None:
    assert narang_threshold(itr, **NARANG) == pytest.approx(expected)


def test_narang_heuristic_start_slope() -> None:
    # θ = 2 q freq / (2 (ramp - start) + 3 (end - ramp)) = 2 * 0.5 * 5 / (2 * 20 + 3 * 20) = 0.05
    assert narang_start_slope(0.5, freq=5, start_itr=10, ramp_itr=30, end_itr=50) == pytest.approx(0.05)
    # With φ = 1.5 θ the final threshold lands near q (the heuristic's purpose).
    theta = narang_start_slope(0.5, freq=1, start_itr=0, ramp_itr=1000, end_itr=3000)
    final = narang_threshold(
        3000, start_itr=0, ramp_itr=1000, end_itr=3000, start_slope=theta, ramp_slope=1.5 * theta, freq=1
    )
    assert final == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (9, 0.0),  # before start
        (10, 0.1),  # s_i at t_0
        (14, 0.1),  # between updates
        (30, 0.8 + (0.1 - 0.8) * (1 - 20 / 80) ** 3),  # 0.504688
        (50, 0.8 + (0.1 - 0.8) * (1 - 40 / 80) ** 3),  # 0.7125
        (89, 0.8 + (0.1 - 0.8) * (1 - 70 / 80) ** 3),  # last update at 80
        (90, 0.8),
        (500, 0.8),
    ],
)
def test_agp_sparsity(step: int, expected: float) -> None:
    assert agp_sparsity(step, final=0.8, initial=0.1, start=10, end=90, freq=10) == pytest.approx(expected)


def test_geometric_sparsity() -> None:
    assert geometric_sparsity(1, 3, 0.875) == pytest.approx(0.5)  # 1 - 0.125^(1/3)
    assert geometric_sparsity(2, 3, 0.875) == pytest.approx(0.75)
    assert geometric_sparsity(3, 3, 0.875) == pytest.approx(0.875)
