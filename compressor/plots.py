"""Renders the plots passes describe in their ``changes["plots"]`` (passes never write files).

A plot spec: ``{"title", "xlabel", "ylabel", "series": {label: (xs, ys)}}`` with an optional
``"twin": {"ylabel", "series"}`` drawn against a second y axis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from compressor.state import PassRecord


def render(spec: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, (xs, ys) in spec["series"].items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 12 else None)
    ax.set(title=spec["title"], xlabel=spec["xlabel"], ylabel=spec["ylabel"])
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if twin := spec.get("twin"):
        other = ax.twinx()
        for label, (xs, ys) in twin["series"].items():
            other.plot(xs, ys, label=label, color="black", linestyle="--")
        other.set_ylabel(twin["ylabel"])
        more = other.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if len(labels) <= 12:
        ax.legend(handles, labels, fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(history: Iterable[PassRecord], folder: Path) -> list[Path]:
    """One PNG per plot of every pass, named ``NN-pass[-K].png`` in run order."""
    written = []
    for index, record in enumerate(history, start=1):
        for k, spec in enumerate(record.changes.get("plots", [])):
            folder.mkdir(parents=True, exist_ok=True)
            suffix = f"-{k + 1}" if k else ""
            path = folder / f"{index:02d}-{re.sub(r'[^a-z0-9-]', '', record.name)}{suffix}.png"
            render(spec, path)
            written.append(path)
    return written


def write_tables(history: Iterable[PassRecord], folder: Path) -> list[Path]:
    """A CSV for every pass whose changes hold a ``table`` ({row: {column: value}})."""
    written = []
    for index, record in enumerate(history, start=1):
        table = record.changes.get("table")
        if not table:
            continue
        columns = list(next(iter(table.values())))
        lines = [",".join(["", *map(str, columns)])]
        lines += [",".join([str(row), *(str(values[c]) for c in columns)]) for row, values in table.items()]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:02d}-{record.name}.csv"
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written
