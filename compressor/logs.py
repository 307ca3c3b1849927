"""Only the tool's own lines reach the terminal: everything else a run prints goes to a log.

Torch, the ONNX exporter and TVM warn freely (Python warnings, logging, and C++ code writing to
file descriptor 2), and so do the subprocesses a run starts. While a run is ``captured`` all of
that goes to a log file in ``cache_root()/logs``; the job copies it into its output folder as
``log.txt``. A failed run leaves no folder, so its log stays in the cache and the error line
names it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from compressor.paths import cache_root


def log_path(run_id: str) -> Path:
    return cache_root() / "logs" / f"{run_id}.log"


@contextlib.contextmanager
def captured(path: Path) -> Iterator[TextIO]:
    """Send file descriptor 2, ``sys.stderr``, warnings and logging to ``path``; yield a stream
    to the terminal's stderr for the tool's own lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("a", buffering=1)
    stderr = sys.stderr
    real = _is_fd2(stderr)
    if real:
        stderr.flush()
    saved = os.dup(2)
    terminal: TextIO = os.fdopen(os.dup(saved), "w", buffering=1) if real else stderr
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    handler = logging.StreamHandler(log)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield terminal
    finally:
        root.removeHandler(handler)
        sys.stderr = stderr
        os.dup2(saved, 2)
        os.close(saved)
        log.close()
        if terminal is not stderr:
            terminal.close()


def _is_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
