"""Latency measurement in the manner of TVM's ``time_evaluator``, each model timed alone.

A *sample* is ``number`` back-to-back runs, timed together (``number`` chosen once so that a
sample lasts at least ``SAMPLE_SECONDS``). A *turn* is a warm-up followed by samples, for one
model. The models compared take turns, at least ``TURNS`` each, so that a slow spell of the
machine (they are shared and noisy) falls on all of them; the report pools every turn's samples.

ONNX Runtime's and TVM's thread pools busy-wait after a run: a session that ran a moment ago
steals the cores from the one being timed (2-3x slower on 2 cores). So on this host each turn
runs in a fresh worker process (``worker.py``) that holds that one model and nothing else, and
times it with its own clock. On a device over RPC a turn runs there, on the device's clock.

Numpy and the standard library only: this file goes to devices with the bundle.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_SECONDS = 0.005
"""Each sample lasts at least this long, so timer overhead and jitter of tiny models average out."""
TURNS = 3
WARMUP_SECONDS = 0.1
"""Untimed runs at the start of every turn: caches, allocators, and the spin of whatever ran before."""
MAX_SAMPLES = 2000
WORKER = Path(__file__).resolve().parent / "worker.py"


@dataclass(frozen=True)
class Latency:
    """Milliseconds per run: median and percentiles over every sample of every turn; ``runs``
    calls in all; ``turn_medians`` the median of each turn (how much the turns agree)."""

    median: float
    p10: float
    p90: float
    runs: int
    samples: int
    turn_medians: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["turn_medians"] = list(self.turn_medians)
        return out


Sampler = Callable[[int], float]
"""Runs the model ``number`` times back to back; returns seconds per run."""


@dataclass(frozen=True)
class Turn:
    """What one turn measured: seconds per run of each sample, and the runs per sample."""

    samples: tuple[float, ...]
    number: int


Turner = Callable[[float, int, "int | None"], Turn]
"""Takes one turn of one model: ``(seconds, min_samples, number)`` -> ``Turn``; ``number`` None
means calibrate it (the first turn)."""


def loop(fn: Callable[[], object]) -> Sampler:
    """A sampler that times ``fn`` here with ``perf_counter``."""

    def sample(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return sample


def calibrate(sample: Sampler) -> int:
    """How many runs make one sample of at least ``SAMPLE_SECONDS`` (after a first run)."""
    sample(1)
    once = sample(3)
    return max(1, math.ceil(SAMPLE_SECONDS / max(once, 1e-9)))


def turn(
    sample: Sampler,
    seconds: float,
    min_samples: int,
    number: int | None = None,
    warmup_seconds: float = WARMUP_SECONDS,
) -> Turn:
    """Warm up, then take samples until there are ``min_samples`` and ``seconds`` of timed runs."""
    number = number or calibrate(sample)
    warm = time.perf_counter()
    while time.perf_counter() - warm < warmup_seconds:
        sample(number)
    samples: list[float] = []
    total = 0.0
    while len(samples) < MAX_SAMPLES and (len(samples) < min_samples or total < seconds):
        samples.append(sample(number))
        total += samples[-1] * number
    return Turn(tuple(samples), number)


def measure_turns(
    turners: Mapping[str, Turner],
    turns: int = TURNS,
    min_samples: int = 30,
    min_seconds: float = 1.0,
    failed: dict[str, str] | None = None,
) -> dict[str, Latency]:
    """Each model takes ``turns`` turns, in rotation; together its turns hold at least
    ``min_samples`` samples and ``min_seconds`` of timed runs.

    With ``failed`` given, a model whose turn raises ``WorkerError`` drops out of the rotation
    with the reason recorded there and the others go on; without it the error propagates."""
    per_turn = (min_seconds / turns, math.ceil(min_samples / turns))
    taken: dict[str, list[Turn]] = {name: [] for name in turners}
    for _ in range(turns):
        for name, take in turners.items():
            if failed is not None and name in failed:
                continue
            number = taken[name][0].number if taken[name] else None
            try:
                taken[name].append(take(*per_turn, number))
            except WorkerError as e:
                if failed is None:
                    raise WorkerError(f"timing {name}: {e}") from None
                failed[name] = str(e)
    return {name: summarize(t) for name, t in taken.items() if not (failed and name in failed)}


def summarize(turns: Sequence[Turn]) -> Latency:
    seconds = [s for t in turns for s in t.samples]
    ms = np.asarray(seconds) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return Latency(
        round(float(median), 5),
        round(float(p10), 5),
        round(float(p90), 5),
        sum(len(t.samples) * t.number for t in turns),
        len(ms),
        tuple(round(float(np.median(t.samples)) * 1e3, 5) for t in turns),
    )


def sampling_turner(sample: Sampler) -> Turner:
    """Turns taken by calling ``sample`` from here (on a device, ``sample`` times there)."""
    return lambda seconds, min_samples, number: turn(sample, seconds, min_samples, number)


@dataclass(frozen=True)
class Factory:
    """A zero-argument callable to time, made in the worker: ``function(*args)`` of the Python
    file ``file`` returns it. ``torch``: whether the worker may import torch (``tvm_ffi`` imports
    it whenever it can, which costs a second and a few hundred MB that a runtime does not need)."""

    file: str
    function: str
    args: tuple[Any, ...] = ()
    torch: bool = False


class WorkerError(RuntimeError):
    """The worker process failed; the message is its last line of error."""


def in_worker(request: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Send ``request`` to a fresh ``worker.py`` process; its reply, or ``WorkerError``."""
    try:
        done = subprocess.run(
            [sys.executable, str(WORKER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise WorkerError(f"the worker took longer than {timeout:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except ValueError:
        reply = {}
    if done.returncode != 0 or "error" in reply or not reply:
        detail = reply.get("error") or next(
            (line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), "no output"
        )
        raise WorkerError(f"the worker failed (exit {done.returncode}): {detail}")
    return reply


def worker_turner(factory: Factory, timeout: float = 600.0) -> Turner:
    """Turns taken each in a fresh ``worker.py`` process that makes ``factory``'s callable and
    times it alone."""

    def take(seconds: float, min_samples: int, number: int | None) -> Turn:
        request = {
            "factory": asdict(factory),
            "seconds": seconds,
            "min_samples": min_samples,
            "number": number,
        }
        reply = in_worker(request, timeout)
        return Turn(tuple(reply["samples"]), int(reply["number"]))

    return take


def run_in_worker(
    factory: Factory, cases: Sequence[Sequence[np.ndarray]], timeout: float = 600.0
) -> list[list[np.ndarray]]:
    """The outputs of ``factory``'s runner (inputs -> outputs) on each case, run in a fresh
    worker process: the artifact is loaded there, not here."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="compressor-run-") as tmp:
        inputs, outputs = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(
            inputs,
            **{
                f"t{t}_{i}": np.ascontiguousarray(x)
                for t, case in enumerate(cases)
                for i, x in enumerate(case)
            },
        )
        spec = {"inputs": str(inputs), "outputs": str(outputs), "cases": len(cases), "arity": len(cases[0])}
        in_worker({"factory": asdict(factory), "run": spec}, timeout)
        with np.load(outputs) as archive:
            count = len(archive.files) // len(cases)
            return [[archive[f"t{t}_{o}"] for o in range(count)] for t in range(len(cases))]


def measure(
    factories: Mapping[str, Factory], turns: int = TURNS, min_samples: int = 30, min_seconds: float = 1.0
) -> dict[str, Latency]:
    """Time each factory's callable alone, in its own worker process per turn, in rotation."""
    return measure_turns(
        {name: worker_turner(f) for name, f in factories.items()}, turns, min_samples, min_seconds
    )


def measure_samplers(
    samplers: Mapping[str, Sampler], min_samples: int = 30, min_seconds: float = 1.0
) -> dict[str, Latency]:
    """In-process rotation, sample by sample: only for work that leaves no CPU thread pool behind
    (GPU kernels timed with CUDA events, one runtime's kernels that share one pool)."""
    number = {name: calibrate(sample) for name, sample in samplers.items()}
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    totals = dict.fromkeys(samplers, 0.0)
    for count in range(1, MAX_SAMPLES + 1):
        for name, sample in samplers.items():
            samples[name].append(sample(number[name]))
            totals[name] += samples[name][-1] * number[name]
        if count >= min_samples and min(totals.values()) >= min_seconds:
            break
    return {name: summarize([Turn(tuple(s), number[name])]) for name, s in samples.items()}
