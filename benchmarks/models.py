"""Whole real models, pruned, against ONNX Runtime on the dense model: one table per model.

Usage: ``python benchmarks/models.py [--models NAME ...] [--sparsity 0.9 ...] [--block RxC]``

For each model (``models/real.py`` at full size, random weights made from a seed, and the zoo's
char-LSTM; char-GRU with ``--models char-gru``) and each sparsity: ``compress MODEL --backend
all --sparsity S --json`` with an empty kernel cache, so TVM's compile time is the cold one.
``compress`` builds and verifies against torch the pruned model and the dense one with each
backend and times all four artifacts each alone in its own worker process, in alternating turns
(three per artifact, medians); the table gives those medians, each as a ratio to the fastest
dense one (ONNX Runtime's, unless TVM's dense build beats it), and the seconds each TVM build
took. ``--block`` prunes in RxC blocks instead of single weights; ``--tune N`` passes
``--tune N`` to ``compress`` (MetaSchedule, from an empty database).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write
from models.real import MODELS, export

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
DEFAULT = ["bert-mini", "bert-base", "resnet-18", "mobilenet-v2", "vit-tiny", "char-lstm"]
FILES = {"char-lstm": ZOO / "char_lstm.pt", "char-gru": ZOO / "char_gru.pt"}


def model_file(name: str, folder: Path) -> Path:
    if name in FILES:
        return FILES[name]
    path = folder / f"{name}.pt2"
    export(*MODELS[name](), path)
    return path


def compress(
    model: Path, sparsity: float, block: str | None, folder: Path, tune: int = 0
) -> tuple[dict, float]:
    """The report of one ``compress`` run, and its wall-clock seconds."""
    out = folder / f"{model.stem}-{sparsity}"
    command = [str(Path(sys.executable).with_name("compress")), str(model), "--backend", "all", "--json"]
    if block:
        command += ["--recipe", f"[magnitude-prune: {{sparsity: {sparsity}, granularity: '{block}'}}]"]
    else:
        command += ["--sparsity", str(sparsity)]
    if tune:
        command += ["--tune", str(tune)]
    env = {**os.environ, "COMPRESSOR_CACHE": str(folder / "cache")}  # cold: no kernel decisions
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"compress failed on {model.name}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout), seconds


def rows_of(name: str, sparsity: float, report: dict, seconds: float) -> list[list[str]]:
    entries = {e["backend"]: e for e in report["targets"]}
    ort, tvm = entries["onnxruntime"], entries["tvm"]
    times = {
        "ONNX Runtime, dense": (ort["dense_latency_ms"]["median"], None),
        f"ONNX Runtime, {sparsity:.0%}": (ort["latency_ms"]["median"], None),
        "TVM (ours), dense": (tvm["dense_latency_ms"]["median"], tvm["dense_build_s"]),
        f"TVM (ours), {sparsity:.0%}": (tvm["latency_ms"]["median"], tvm["build_s"]),
    }
    best = min(times["ONNX Runtime, dense"][0], times["TVM (ours), dense"][0])
    ort_dense = times["ONNX Runtime, dense"][0]
    return [
        [
            name,
            what,
            f"{ms:.4g}",
            f"{ort_dense / ms:.2f}x",
            f"{best / ms:.2f}x",
            "" if build is None else f"{build:.0f}",
            "yes" if all(e["verified"] for e in entries.values()) else "**no**",
        ]
        for what, (ms, build) in times.items()
    ] + [[name, f"(`compress`: {seconds:.0f} s, sparsity {report['sparsity']:.3f})", "", "", "", "", ""]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT, choices=[*MODELS, *FILES])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.9])
    parser.add_argument("--block", help="prune in RxC blocks, e.g. 4x1")
    parser.add_argument("--tune", type=int, default=0, help="compress --tune TRIALS (MetaSchedule)")
    parser.add_argument("--name", default="models")
    args = parser.parse_args()
    rows, reports = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = model_file(name, Path(tmp))
            for sparsity in args.sparsity:
                report, seconds = compress(model, sparsity, args.block, Path(tmp), args.tune)
                reports[f"{name}@{sparsity}"] = {"seconds": seconds, "report": report}
                rows += rows_of(name, sparsity, report, seconds)
                for row in rows[-5:]:
                    print(" | ".join(row), flush=True)
    command = " --models " + " ".join(args.models) if args.models != DEFAULT else ""
    command += f" --tune {args.tune}" if args.tune else ""
    granularity = f"blocks {args.block}" if args.block else "single weights"
    tuned = ", and MetaSchedule's tuning from an empty database" if args.tune else ""
    write(
        args.name,
        "Whole models, batch 1, 2 threads: latency (ms) and ratios to ONNX Runtime on the dense model",
        ["model", "artifact", "median ms", "vs ONNX Runtime dense", "vs best dense", "build s", "verified"],
        rows,
        f"""
`python benchmarks/models.py{command}`: sparsity {", ".join(map(str, args.sparsity))}, {granularity},
one-shot global magnitude pruning. Each row is `compress`'s own median, every artifact timed alone
in a worker process in alternating turns, all verified against torch before timing. *vs ONNX
Runtime dense* = ONNX Runtime's dense median / this median (above 1: faster); *vs best dense*
uses the faster of the two dense builds. *Build s*: seconds lowering with TVM from an empty kernel
cache (kernel choice by timing included{tuned}).
""",
        reports,
    )


if __name__ == "__main__":
    main()
