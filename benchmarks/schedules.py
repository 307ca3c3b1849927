"""Renders each pruning schedule as a PNG in benchmarks/results/ (pure functions, no training).

python benchmarks/schedules.py
"""

from __future__ import annotations

from common import RESULTS

from compressor.plots import render
from passes.schedules import agp_sparsity, geometric_sparsity, narang_start_slope, narang_threshold


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    steps = list(range(0, 3500))
    window = {"start_itr": 500, "ramp_itr": 1500, "end_itr": 3000, "freq": 100}
    narang = {}
    for q in (0.05, 0.1):
        theta = narang_start_slope(q, **window)
        narang[f"q = {q} (θ = {theta:.4f}, φ = 1.5θ)"] = (
            steps,
            [narang_threshold(s, start_slope=theta, ramp_slope=1.5 * theta, **window) for s in steps],
        )
    render(
        {
            "title": "Narang 2017: threshold ε vs iteration (start 500, ramp 1500, end 3000, freq 100)",
            "xlabel": "iteration",
            "ylabel": "threshold ε",
            "series": narang,
        },
        RESULTS / "schedule_narang.png",
    )
    agp = {
        f"s_f = {f}": (steps, [agp_sparsity(s, final=f, start=500, end=3000, freq=100) for s in steps])
        for f in (0.8, 0.9, 0.95)
    }
    render(
        {
            "title": "Zhu & Gupta 2017 (AGP): sparsity vs step (start 500, end 3000, Δt 100)",
            "xlabel": "step",
            "ylabel": "sparsity",
            "series": agp,
        },
        RESULTS / "schedule_agp.png",
    )
    cycles = list(range(0, 6))
    han = {f"s = {f}": (cycles, [geometric_sparsity(c, 5, f) for c in cycles]) for f in (0.9, 0.95)}
    render(
        {
            "title": "Han et al. 2015 iterative pruning: sparsity after each of 5 prune-retrain cycles",
            "xlabel": "cycle",
            "ylabel": "sparsity",
            "series": han,
        },
        RESULTS / "schedule_iterative.png",
    )
    epochs = list(range(1, 31))
    dsd = {"DSD mask (30%)": (epochs, [0.3 if 10 < e <= 20 else 0.0 for e in epochs])}
    render(
        {
            "title": "Han et al. 2017 (DSD): dense, sparse, dense again (10 epochs each)",
            "xlabel": "epoch",
            "ylabel": "sparsity",
            "series": dsd,
        },
        RESULTS / "schedule_dsd.png",
    )
    print("wrote", ", ".join(f"schedule_{n}.png" for n in ("narang", "agp", "iterative", "dsd")))


if __name__ == "__main__":
    main()
