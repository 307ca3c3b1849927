"""Only the tool's own lines reach the terminal: everything else a run prints goes to a log.

Torch, the ONNX exporter and TVM warn freely (Python warnings, logging, and C++ code writing to
file descriptor 2), and so do the subprocesses a run starts. While a run is ``captured`` all of
that goes to a log file in ``cache_root()/logs``; the job copies it into its output folder as
``log.txt``. A failed run leaves no folder, so its log stays in the cache and the error line
names it.
"""

from __future__ import annotations

import contextlib
import faulthandler
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
    """Send file descriptor 2 (and with it ``sys.stderr``, warnings and logging) to ``path``;
    yield a stream to the terminal's stderr for the tool's own lines. A crash of native code
    in between still prints its traceback there (``faulthandler``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("a", buffering=1)
    stderr = sys.stderr
    real = _is_fd2(stderr)
    stderr.flush()
    saved = os.dup(2)
    if real:
        encoding = getattr(stderr, "encoding", None) or "utf-8"
        terminal: TextIO = os.fdopen(os.dup(saved), "w", buffering=1, encoding=encoding, errors="replace")
    else:  # already redirected (pytest's capture): keep writing our lines there
        terminal = stderr
        sys.stderr = log  # Python-level output is not on fd 2 here: send it to the log too
    os.dup2(log.fileno(), 2)
    faulting = faulthandler.is_enabled()
    if real:
        faulthandler.enable(terminal)
    try:
        yield terminal
    finally:
        if real:
            faulthandler.disable()
            if faulting:
                faulthandler.enable(stderr)
        sys.stderr.flush()
        sys.stderr = stderr
        os.dup2(saved, 2)
        os.close(saved)
        if terminal is not stderr:
            terminal.close()
        log.flush()  # left open: a handler a library made meanwhile may still hold it


def _is_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
