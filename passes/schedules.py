"""Pruning schedules as pure functions of the training step (as in ``torch.ao.pruning``)."""

from __future__ import annotations


def narang_threshold(
    itr: int, *, start_itr: int, ramp_itr: int, end_itr: int, start_slope: float, ramp_slope: float, freq: int
) -> float:
    """The pruning threshold ε at iteration ``itr`` (Narang et al. 2017, arXiv:1704.05119, Alg. 1).

    ε is updated only at iterations ``start_itr <= i < end_itr`` with ``i % freq == 0``, and
    holds its value in between and after ``end_itr``::

        start_itr <= i < ramp_itr:  ε = θ (i - start_itr + 1) / freq
        ramp_itr  <= i < end_itr:   ε = (θ (ramp_itr - start_itr + 1) + φ (i - ramp_itr + 1)) / freq

    with θ = ``start_slope`` and φ = ``ramp_slope``. Before the first update ε = 0.
    """
    last = min(itr, end_itr - 1)
    update = last - last % freq  # the latest iteration with i % freq == 0
    if update < start_itr:
        return 0.0
    if update < ramp_itr:
        return start_slope * (update - start_itr + 1) / freq
    return (start_slope * (ramp_itr - start_itr + 1) + ramp_slope * (update - ramp_itr + 1)) / freq


def narang_start_slope(q: float, *, freq: int, start_itr: int, ramp_itr: int, end_itr: int) -> float:
    """θ = 2 q freq / (2 (ramp_itr - start_itr) + 3 (end_itr - ramp_itr)) (Narang 2017, §3).

    ``q`` is the 90th percentile of the layer's |w| when pruning starts; with φ = 1.5 θ the final
    threshold comes out near q, i.e. about 90% sparsity.
    """
    return 2 * q * freq / (2 * (ramp_itr - start_itr) + 3 * (end_itr - ramp_itr))


def agp_sparsity(step: int, *, final: float, initial: float = 0.0, start: int, end: int, freq: int) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878)::

        s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3,  t ∈ {t_0, t_0 + Δt, ..., t_0 + n Δt}

    with t_0 = ``start``, t_0 + n Δt = ``end``, Δt = ``freq``: fast pruning while weights are
    plentiful, slower as few remain. 0 before ``start``, ``final`` from ``end`` on.
    """
    if step < start:
        return 0.0
    if step >= end:
        return final
    update = start + (step - start) // freq * freq
    return final + (initial - final) * (1 - (update - start) / (end - start)) ** 3


def geometric_sparsity(cycle: int, cycles: int, final: float) -> float:
    """Sparsity after ``cycle`` of ``cycles`` prune-retrain cycles, each removing the same share
    of the remaining weights: 1 - (1 - s)^(cycle / cycles) (iterative pruning, Han 2015)."""
    return 1.0 - (1.0 - final) ** (cycle / cycles)
