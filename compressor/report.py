"""report.json (the contract in DESIGN.md) and its terminal table."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from compressor.state import State, layer_sparsity

if TYPE_CHECKING:
    from targets.base import Compiled
    from targets.runtime.measure import Latency


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def target_entry(
    compiled: Compiled,
    out: Path,
    latency: Latency | None,
    dense: Latency | None,
    dense_bytes: int | None = None,
) -> dict[str, Any]:
    assert compiled.verification is not None, "verify before reporting"
    return {
        "target": compiled.target.name,
        "backend": compiled.backend,
        "artifact": str(compiled.artifact.relative_to(out)),
        "artifact_bytes": compiled.nbytes,
        "dense_artifact_bytes": dense_bytes,
        "verified": True,
        "max_abs_error": compiled.verification.max_abs_error,
        "tolerance": compiled.verification.tolerance,
        "verify_trials": compiled.verification.trials,
        "latency_ms": latency.to_json() if latency else None,
        "dense_latency_ms": dense.to_json() if dense else None,
        "speedup": round(dense.median / latency.median, 4) if latency and dense else None,
        "speedup_vs_best_dense": None,  # filled in by build_report
        "threads": compiled.runner.threads,
        "device": compiled.device.name if compiled.device else "this host",
        "emulated": bool(compiled.device and compiled.device.emulated),
        "kernels": getattr(compiled.runner, "layers", None) or None,
    }


def add_comparisons(entries: list[dict[str, Any]]) -> None:
    """``speedup_vs_best_dense``: the fastest unpruned model of any backend on the same target
    (all timed in the same rotation) over this backend's compressed model."""
    for entry in entries:
        dense = [
            e["dense_latency_ms"]["median"]
            for e in entries
            if e["target"] == entry["target"] and e["dense_latency_ms"]
        ]
        if dense and entry["latency_ms"]:
            entry["speedup_vs_best_dense"] = round(min(dense) / entry["latency_ms"]["median"], 4)


def choose(entries: list[dict[str, Any]], measured: bool = True) -> dict[str, dict[str, Any]]:
    """Per target, the backend to deploy: the fastest verified and timed one, or, with none
    timed, the target's preferred backend among those verified (``entries`` are in preference
    order)."""
    chosen = {}
    for target in dict.fromkeys(e["target"] for e in entries):
        mine = [e for e in entries if e["target"] == target and e["verified"]]
        timed = [e for e in mine if e["latency_ms"]]
        if timed:
            best = min(timed, key=lambda e: e["latency_ms"]["median"])
            others = [f"{e['backend']} {e['latency_ms']['median']:.3g} ms" for e in timed if e is not best]
            others += [f"{e['backend']} not timed" for e in mine if not e["latency_ms"]]
            why = f"the fastest verified: {best['latency_ms']['median']:.3g} ms" + (
                f" (vs {', '.join(others)})" if others else " (the only one built)"
            )
        elif mine:
            best = mine[0]
            cause = "--no-measure" if not measured else "none could be timed: see timing_error"
            why = f"not timed ({cause}): the target's preferred backend among those verified"
        else:
            continue
        chosen[target] = {"backend": best["backend"], "artifact": best["artifact"], "why": why}
    return chosen


def build_report(
    model: Path,
    original: State,
    final: State,
    metric_before: float | None,
    recipe: str,
    entries: list[dict[str, Any]],
    skipped: list[dict[str, Any]] | None = None,
    measured: bool = True,
) -> dict[str, Any]:
    before, after = original.stats(), final.stats()
    add_comparisons(entries)
    return {
        "model": str(model),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "recipe": recipe,
        "params_before": before.params,
        "params_after": after.params,
        "nonzero_after": after.nonzeros,
        "sparsity": round(after.sparsity, 6),
        "compression": round(before.params / max(after.nonzeros, 1), 4),
        "metric": final.task.metric if final.task else None,
        "metric_before": metric_before,
        "metric_after": final.evaluate(),
        "layer_sparsity": layer_sparsity(final.module),
        "passes": [r.to_json() for r in final.history],
        "targets": entries,
        "chosen": choose(entries, measured),
        "skipped": skipped or [],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {p: _version(p) for p in ("compressor", "torch", "onnxruntime", "onnx", "apache-tvm")},
    }


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"compress {report['model']}", title_justify="left")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row("parameters", f"{report['params_before']:,}", f"{report['params_after']:,}")
    table.add_row("nonzeros", "", f"{report['nonzero_after']:,} ({report['compression']:.2f}x fewer)")
    table.add_row("sparsity", "", f"{report['sparsity']:.1%}")
    if report["metric"]:
        table.add_row(report["metric"], f"{report['metric_before']:.4g}", f"{report['metric_after']:.4g}")
    return table


def kernels_table(entry: dict[str, Any]) -> Table:
    """The matmul kernel chosen per weight, with the best dense and sparse times measured."""
    table = Table(title=f"{entry['target']}/{entry['backend']} kernels (ms per call)", title_justify="left")
    for column in ("weight", "shape", "batch", "sparsity", "kernel", "calls", "dense", "chosen"):
        table.add_column(column, justify="left" if column in ("weight", "kernel") else "right")
    for k in entry["kernels"]:
        times = k["times_ms"]
        dense = min((t for name, t in times.items() if name.startswith("dense")), default=None)
        table.add_row(
            k["name"],
            "x".join(map(str, k["shape"])),
            str(k["batch"]),
            f"{k['sparsity']:.0%}",
            k["format"] + (" (cached)" if k["cached"] else ""),
            "-" if k["calls"] is None else str(k["calls"]),
            f"{dense:.4f}" if dense is not None else "-",
            f"{times[k['format']]:.4f}" if k["format"] in times else "-",
        )
    return table


def targets_table(report: dict[str, Any]) -> Table:
    table = Table(title="targets (latency in ms; p10-p90 of the compressed model)", title_justify="left")
    columns = (
        "target/backend",
        "verified",
        "max err",
        "latency",
        "p10-p90",
        "dense",
        "speedup",
        "vs best dense",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "target/backend" else "right")
    for t in report["targets"]:
        lat, dense = t["latency_ms"], t["dense_latency_ms"]
        table.add_row(
            f"{t['target']}/{t['backend']}" + (" (emulated)" if t["emulated"] else ""),
            str(t["verified"]).lower(),
            f"{t['max_abs_error']:.1e}",
            f"{lat['median']:.3g}" if lat else "-",
            f"{lat['p10']:.3g}-{lat['p90']:.3g}" if lat else "-",
            f"{dense['median']:.3g}" if dense else "-",
            f"{t['speedup']:.2f}x" if t["speedup"] else "-",
            f"{t['speedup_vs_best_dense']:.2f}x" if t["speedup_vs_best_dense"] else "-",
        )
    return table
