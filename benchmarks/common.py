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


def speedup_row(result: dict[str, Any], plain: Sequence[str], with_speedup: Sequence[str]) -> list[Any]:
    """A results row of a kernel benchmark: shape, sparsity, batch, then the median ms of each of
    ``plain``, then of each of ``with_speedup`` with its speedup."""
    n, k = result["shape"]
    ms, speedup = result["ms"], result["speedup"]
    return [
        f"{n}x{k}",
        f"{result['sparsity']:.0%}",
        result["batch"],
        *(f"{ms[name]:.4f}" for name in plain),
        *(f"{ms[name]:.4f} ({speedup[name]:.2f}x)" for name in with_speedup),
    ]


def speedup_result(
    shape: tuple[int, int],
    sparsity: float,
    batch: int,
    variants: dict[str, str],
    times: dict[str, float],
    peers: Sequence[str],
    ours: Sequence[str],
) -> dict[str, Any]:
    """One case of a kernel benchmark: median ms per callable, and each of ``ours`` as a speedup
    over the fastest of ``peers``; ``variants`` names the kernel variant each of ours ran."""
    best = min(times[p] for p in peers)
    return {
        "shape": list(shape),
        "sparsity": sparsity,
        "batch": batch,
        "variants": variants,
        "ms": times,
        "speedup": {name: best / times[name] for name in ours},
    }
