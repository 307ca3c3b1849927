"""Character-level text from the CPython standard library's own ``.py`` sources.

Every machine with Python has tens of MB of it. Files are split deterministically by the MD5 of
their path relative to the library (1 in 20 to validation, 1 in 20 to test), so a file's text
is never in two splits and the split does not depend on ``PYTHONHASHSEED``. Left out, because
they differ between machines with the same Python: ``site-packages`` (whatever was installed)
and the files written when Python was built (``_sysconfigdata_*.py``, ``config-*/``: install
paths and compiler flags). The test suites (``test/``, ``*/tests/``, about two thirds of the
bytes) and ``idlelib`` are kept: they are ordinary Python source, and the default sizes read
only the first few MB of the sorted files anyway.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np

PRINTABLE = [9, 10, *range(32, 127)]
"""Tab, newline and printable ASCII each get an id; every other byte maps to ``OTHER``."""
OTHER = len(PRINTABLE)
VOCAB = len(PRINTABLE) + 1  # 98
_TABLE = np.full(256, OTHER, dtype=np.int64)
_TABLE[PRINTABLE] = np.arange(len(PRINTABLE))
SPLITS = ("train", "val", "test")
MACHINE_SPECIFIC = ("site-packages", "config-*", "_sysconfigdata_*.py")
"""Glob patterns of folders and files left out (see the module docstring)."""


def encode(text: bytes) -> np.ndarray:
    """Bytes to ids (int64), one id per byte, so any file encodes without a decoding error."""
    return _TABLE[np.frombuffer(text, dtype=np.uint8)]


def decode(ids: np.ndarray) -> str:
    """Ids back to text (``OTHER`` as U+FFFD), for reading samples and for the tests."""
    return "".join(chr(PRINTABLE[i]) if i < OTHER else "\ufffd" for i in ids.tolist())


def stdlib_files(root: Path | None = None) -> dict[str, list[Path]]:
    """The library's ``.py`` files by split, each list sorted by relative path."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not _machine_specific(d)]
        found += [Path(folder, n) for n in names if n.endswith(".py") and not _machine_specific(n)]
    files: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        bucket = int(hashlib.md5(relative.encode()).hexdigest(), 16) % 20
        files["val" if bucket == 0 else "test" if bucket == 1 else "train"].append(path)
    return files


def _machine_specific(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MACHINE_SPECIFIC)


def char_splits(
    seq_len: int = 64, max_bytes: dict[str, int] | None = None, root: Path | None = None
) -> dict[str, np.ndarray]:
    """``x_SPLIT`` / ``y_SPLIT`` of shape (N, seq_len): non-overlapping windows of the split's
    files joined by newlines (sorted order, at most ``max_bytes[split]`` bytes), ``y`` being
    ``x`` shifted by one character."""
    limits = {"train": 1_500_000, "val": 150_000, "test": 150_000, **(max_bytes or {})}
    out = {}
    for split, paths in stdlib_files(root).items():
        chunks, size = [], 0
        for path in paths:
            if size >= limits[split]:
                break
            chunks.append(path.read_bytes())
            size += len(chunks[-1]) + 1
        ids = encode(b"\n".join(chunks)[: limits[split]])
        windows = len(ids) // (seq_len + 1)
        block = ids[: windows * (seq_len + 1)].reshape(windows, seq_len + 1)
        out[f"x_{split}"], out[f"y_{split}"] = block[:, :-1].copy(), block[:, 1:].copy()
    return out
