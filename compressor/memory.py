"""The job's peak memory: the resident memory of its process and every process under it.

A job runs children one at a time (timing and verification workers, the ONNX converter, the
compiler that links a library); what a user's machine must hold is the peak of their sum, so a
thread samples it every ``INTERVAL`` seconds while the job runs (``psutil``). It pauses while
models are timed, so as not to wake on the cores being measured: a timing worker holds the
artifact its verification worker held, which was sampled.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psutil

INTERVAL = 0.05


class PeakMemory:
    """The largest sum of resident bytes seen over this process and its descendants."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._process = psutil.Process()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.sample()
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def sample(self) -> int:
        total = 0
        for p in [self._process, *self._process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)
        return total

    def _watch(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._running.wait()
            self.sample()


@contextlib.contextmanager
def watched() -> Iterator[PeakMemory]:
    """Sample the peak while the block runs."""
    memory = PeakMemory()
    memory.sample()
    thread = threading.Thread(target=memory._watch, name="peak-memory", daemon=True)
    thread.start()
    try:
        yield memory
    finally:
        memory._stop.set()
        memory._running.set()
        thread.join()
        memory.sample()
