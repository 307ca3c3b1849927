from __future__ import annotations

from pathlib import Path

import pytest

from compressor.errors import OutputError
from compressor.output import MARKER, output_dir, written_by_compress


def test_success_replaces_and_failure_keeps_the_earlier_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_dir(out, "run-1") as tmp:
        (tmp / "report.json").write_text("first")
    assert (out / "report.json").read_text() == "first"
    assert written_by_compress(out) and '"run-1"' in (out / MARKER).read_text()
    with pytest.raises(RuntimeError), output_dir(out) as tmp:
        (tmp / "report.json").write_text("half")
        raise RuntimeError("failed mid-run")
    assert (out / "report.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with output_dir(out) as tmp:
        (tmp / "report.json").write_text("second")
    assert (out / "report.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_of_the_users_with_a_report_is_never_replaced(tmp_path: Path) -> None:
    mine = tmp_path / "my_experiments"
    mine.mkdir()
    (mine / "report.json").write_text('{"mine": true}')
    (mine / "notes.txt").write_text("do not lose")
    with pytest.raises(OutputError, match="was not written by compress"), output_dir(mine):
        pass
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_experiments"]


def test_a_forged_or_broken_marker_is_not_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("not json")
    assert not written_by_compress(out)
    (out / MARKER).write_text('{"format": "something else", "run": "x"}')
    assert not written_by_compress(out)


def test_a_folder_that_appears_mid_run_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError), output_dir(out):
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
