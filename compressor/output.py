"""The output folder: written to a temporary sibling and moved into place only on success."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import OutputError

MARKER = "report.json"


def check_output_dir(out: Path) -> None:
    """Refuse early to replace anything but an earlier output folder of this tool."""
    if out.exists() and not (out.is_dir() and (out / MARKER).is_file()):
        raise OutputError(
            f"--out {str(out)!r} exists and is not an earlier compress output; choose another --out"
        )
    if not out.parent.is_dir():
        raise OutputError(f"cannot write --out {str(out)!r}: folder {str(out.parent)!r} does not exist")


@contextlib.contextmanager
def output_dir(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; on success it replaces ``out``, on failure it goes.

    An earlier good ``out`` is only removed after the new one is complete.
    """
    check_output_dir(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {str(out.parent)!r}: {e.strerror}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
