"""Callables for the timing worker to make and time (loaded by file path, as worker.py does)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def logged(name: str, log: str, seconds: float = 0.0) -> Callable[[], object]:
    """Appends ``name pid`` to ``log`` once per turn (when made), then sleeps ``seconds`` per call."""
    with open(log, "a") as f:
        f.write(f"{name} {os.getpid()}\n")
    return lambda: time.sleep(seconds)


def broken() -> Callable[[], object]:
    raise RuntimeError("the artifact cannot load here")


def uses_torch() -> Callable[[], object]:
    import torch

    return lambda: torch.zeros(1)
