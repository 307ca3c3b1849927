from __future__ import annotations

from pathlib import Path

import pytest

from compressor.output import output_dir


def test_success_replaces_and_failure_keeps_the_earlier_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_dir(out) as tmp:
        (tmp / "report.json").write_text("first")
    assert (out / "report.json").read_text() == "first"
    with pytest.raises(RuntimeError), output_dir(out) as tmp:
        (tmp / "report.json").write_text("half")
        raise RuntimeError("failed mid-run")
    assert (out / "report.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with output_dir(out) as tmp:
        (tmp / "report.json").write_text("second")
    assert (out / "report.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
