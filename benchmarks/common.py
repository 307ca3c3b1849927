"""Writing benchmark results: a markdown table (committed) and the raw JSON beside it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def host() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )


def write(
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: str,
    data: dict[str, Any],
) -> Path:
    """``results/NAME.md`` (the table, the command that made it, the host) and ``NAME.json``."""
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["python", *sys.argv])
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Host: {host()}  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        "",
        notes.strip(),
        "",
    ]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines))
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"command": command, "host": host(), **data}, indent=2) + "\n"
    )
    print("\n".join(lines))
    return path
