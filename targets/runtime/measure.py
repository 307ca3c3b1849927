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


Sampler = Callable[[int], float]
"""Runs the model ``number`` times back to back; returns seconds per run."""


def loop(fn: Callable[[], object]) -> Sampler:
    """A sampler that times ``fn`` here with ``perf_counter``."""

    def sample(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return sample


def measure(
    fns: Mapping[str, Callable[[], object]],
    min_samples: int = 30,
    min_seconds: float = 1.0,
    max_samples: int = 2000,
    settle_seconds: float = 0.0,
) -> dict[str, Latency]:
    """Time each zero-argument callable here (``measure_samplers`` of ``loop(fn)``)."""
    samplers = {name: loop(fn) for name, fn in fns.items()}
    return measure_samplers(samplers, min_samples, min_seconds, max_samples, settle_seconds)


def measure_samplers(
    samplers: Mapping[str, Sampler],
    min_samples: int = 30,
    min_seconds: float = 1.0,
    max_samples: int = 2000,
    settle_seconds: float = 0.0,
) -> dict[str, Latency]:
    """Take samples of each model in turn; stop once every one has ``min_samples`` samples and
    ``min_seconds`` of timed runs (or ``max_samples`` samples). A sampler may time on a remote
    device (``time_evaluator`` over RPC): only the device's own clock counts.

    ``settle_seconds`` of untimed runs precede each sample: callables from different runtimes
    leave thread pools spinning for a while after they return, which would slow the next one.
    """
    number = {name: _calibrate(sample) for name, sample in samplers.items()}
    settle = {name: math.ceil(settle_seconds / SAMPLE_SECONDS * n) for name, n in number.items()}
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    totals = dict.fromkeys(samplers, 0.0)
    for count in range(1, max_samples + 1):
        for name, sample in samplers.items():
            if settle[name]:
                sample(settle[name])
            seconds = sample(number[name])
            samples[name].append(seconds)
            totals[name] += seconds * number[name]
        if count >= min_samples and min(totals.values()) >= min_seconds:
            break
    return {name: _summary(s, number[name]) for name, s in samples.items()}


def _calibrate(sample: Sampler) -> int:
    """Warm up and pick how many runs make one sample of at least ``SAMPLE_SECONDS``."""
    sample(1)
    once = sample(3)
    return max(1, math.ceil(SAMPLE_SECONDS / max(once, 1e-9)))


def _summary(seconds: list[float], number: int) -> Latency:
    ms = np.asarray(seconds) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return Latency(
        round(float(median), 5), round(float(p10), 5), round(float(p90), 5), len(ms) * number, len(ms)
    )
