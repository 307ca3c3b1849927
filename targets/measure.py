"""Latency measurement in the manner of TVM's ``time_evaluator``: warm-up, then repeated
samples of ``number`` back-to-back runs each; the models compared take turns sample by sample,
so that they share the machine's state (these machines are shared and noisy)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_SECONDS = 0.005
"""Each sample lasts at least this long, so timer overhead and jitter of tiny models average out."""


@dataclass(frozen=True)
class Latency:
    """Milliseconds per run: median and percentiles over samples; ``runs`` calls in all."""

    median: float
    p10: float
    p90: float
    runs: int
    samples: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def measure(
    fns: Mapping[str, Callable[[], object]],
    min_samples: int = 30,
    min_seconds: float = 1.0,
    max_samples: int = 2000,
    settle_seconds: float = 0.0,
) -> dict[str, Latency]:
    """Time each zero-argument callable; stop once every one has ``min_samples`` samples and
    ``min_seconds`` of timed runs (or ``max_samples`` samples).

    ``settle_seconds`` of untimed runs precede each sample: callables from different runtimes
    leave thread pools spinning for a while after they return, which would slow the next one.
    """
    number = {name: _calibrate(fn) for name, fn in fns.items()}
    settle = {name: math.ceil(settle_seconds / SAMPLE_SECONDS * n) for name, n in number.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    totals = dict.fromkeys(fns, 0.0)
    for count in range(1, max_samples + 1):
        for name, fn in fns.items():
            for _ in range(settle[name]):
                fn()
            start = time.perf_counter()
            for _ in range(number[name]):
                fn()
            elapsed = time.perf_counter() - start
            samples[name].append(elapsed / number[name])
            totals[name] += elapsed
        if count >= min_samples and min(totals.values()) >= min_seconds:
            break
    return {name: _summary(s, number[name]) for name, s in samples.items()}


def _calibrate(fn: Callable[[], object]) -> int:
    """Warm up and pick how many runs make one sample of at least ``SAMPLE_SECONDS``."""
    fn()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    once = (time.perf_counter() - start) / 3
    return max(1, math.ceil(SAMPLE_SECONDS / max(once, 1e-9)))


def _summary(seconds: list[float], number: int) -> Latency:
    ms = np.asarray(seconds) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return Latency(
        round(float(median), 5), round(float(p10), 5), round(float(p90), 5), len(ms) * number, len(ms)
    )
