"""The output folder: written to a temporary sibling and moved into place only on success.

Every folder ``compress`` writes holds a marker file, ``.compress-output``, naming the run that
wrote it. Only a folder with that marker is ever replaced: anything else at ``--out``, such as a
folder of the user's that happens to hold a ``report.json``, is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from compressor.errors import OutputError

MARKER = ".compress-output"
MARKER_FORMAT = "compressor.output"


def new_run_id() -> str:
    return uuid.uuid4().hex


def written_by_compress(out: Path) -> bool:
    """Whether ``out`` is a folder holding the marker of a ``compress`` run."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and bool(marker.get("run"))


def check_output_dir(out: Path) -> None:
    """Refuse early to replace anything but an earlier output folder of this tool."""
    if out.exists() and not (out.is_dir() and written_by_compress(out)):
        raise OutputError(
            f"--out {str(out)!r} exists and was not written by compress (it has no {MARKER}); "
            "it is left untouched: choose another --out"
        )
    if not out.parent.is_dir():
        raise OutputError(f"cannot write --out {str(out)!r}: folder {str(out.parent)!r} does not exist")


@contextlib.contextmanager
def output_dir(out: Path, run_id: str | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` holding the marker of run ``run_id``; on success it
    replaces ``out``, on failure it goes.

    An earlier good ``out`` is only removed after the new one is complete.
    """
    check_output_dir(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {str(out.parent)!r}: {e.strerror}") from None
    try:
        marker = {
            "format": MARKER_FORMAT,
            "run": run_id or new_run_id(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        (tmp / MARKER).write_text(json.dumps(marker) + "\n")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        check_output_dir(out)  # nothing foreign appeared there while the run went on
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    out.rename(old / out.name)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
