"""Data-parallel retraining under torchrun (2 processes, gloo): same masks on both ranks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_hold_the_same_masks_and_only_rank0_writes(zoo: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(worker),
        str(zoo),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["masks"] == rank1["masks"] and len(rank0["masks"]) == 3
    assert rank0["weights"] == rank1["weights"]
    assert abs(rank0["sparsity"] - 0.8) < 0.02
    assert (tmp_path / "job" / "report.json").is_file()
    assert json.loads((tmp_path / "rank1-report-keys.json").read_text()) == []  # rank 1 wrote nothing
    assert "targets" in json.loads((tmp_path / "rank0-report-keys.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "job",
        "rank0-report-keys.json",
        "rank0.json",
        "rank1-report-keys.json",
        "rank1.json",
    ]
