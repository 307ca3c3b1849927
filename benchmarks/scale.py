"""Memory and time of ``compress`` on large models: BERT-base-sized (110M parameters) and
BERT-large-sized (335M) encoders, every backend.

    python benchmarks/scale.py                         # both, --backend all (about 30 minutes)
    python benchmarks/scale.py --models bert-base --no-measure

Each model (``models/real.py``, random weights from a seed, sequence 128) is written as a
``torch.export`` archive, then ``compress MODEL --backend all --sparsity 0.9`` runs as a
subprocess while this script samples the resident memory of it and all its child processes
(workers, converters) every 50 ms: the peak of their sum is the job's peak. The budget is
1.5 GB + 3x the fp32 weight bytes. The job's own ``peak_rss_bytes`` (its peak plus its largest
child's, an upper bound) and the seconds of the pruning pass are read from its report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import psutil

from benchmarks.common import write
from models.real import MODELS, export

GB = 1 << 30


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run(name: str, folder: Path, measure: bool) -> dict:
    module, inputs = MODELS[name]()
    params = sum(p.numel() for p in module.parameters())
    model = folder / f"{name}.pt2"
    export(module, inputs, model)
    del module
    command = [
        str(Path(sys.executable).with_name("compress")),
        str(model),
        "--backend",
        "all",
        "--sparsity",
        "0.9",
        "--json",
        "--out",
        str(folder / f"{name}-out"),
        *([] if measure else ["--no-measure"]),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(watched))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compress failed on {name}: {err.strip().splitlines()[-1:]}")
    report = json.loads(out)
    prune = next(p for p in report["passes"] if p["name"] == "magnitude-prune")
    weights = 4 * params
    return {
        "model": name,
        "params": params,
        "weight_bytes": weights,
        "budget_bytes": int(1.5 * GB + 3 * weights),
        "peak_bytes": peak[0],
        "reported_peak_bytes": report["peak_rss_bytes"],
        "prune_seconds": prune["seconds"],
        "total_seconds": round(seconds, 1),
        "measured": measure,
        "targets": {
            e["backend"]: {
                "verified": e["verified"],
                "latency_ms": e["latency_ms"]["median"] if e["latency_ms"] else None,
                "dense_latency_ms": e["dense_latency_ms"]["median"] if e["dense_latency_ms"] else None,
            }
            for e in report["targets"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert-base", "bert-large"], choices=sorted(MODELS))
    parser.add_argument("--no-measure", action="store_true", help="build and verify only")
    parser.add_argument("--name", default="scale")
    args = parser.parse_args()
    results, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = run(name, Path(tmp), not args.no_measure)
            results.append(r)
            latencies = ", ".join(
                f"{b}: {t['latency_ms']:.1f} ms (dense {t['dense_latency_ms']:.1f})"
                for b, t in r["targets"].items()
                if t["latency_ms"]
            )
            rows.append(
                [
                    name,
                    f"{r['params'] / 1e6:.0f}M",
                    f"{r['weight_bytes'] / GB:.2f}",
                    f"{r['budget_bytes'] / GB:.2f}",
                    f"{r['peak_bytes'] / GB:.2f}",
                    f"{r['reported_peak_bytes'] / GB:.2f}",
                    f"{r['prune_seconds']:.2f}",
                    f"{r['total_seconds']:.0f}",
                    latencies or "-",
                ]
            )
            print(rows[-1], flush=True)
    write(
        args.name,
        "compress on large encoders (--backend all, --sparsity 0.9): peak memory and time",
        [
            "model",
            "parameters",
            "fp32 weights, GB",
            "budget, GB",
            "peak RSS, GB (all processes)",
            "peak_rss_bytes, GB (report)",
            "magnitude-prune, s",
            "compress, s",
            "latency (batch 1, seq 128)",
        ],
        rows,
        """
Budget: 1.5 GB + 3x the fp32 weight bytes. Peak RSS: the largest sum of the resident memory of
`compress` and every process under it, sampled every 50 ms. `peak_rss_bytes` is what the job
reports of itself: its own peak plus its largest child's (the children run one at a time).
""",
        {"results": results},
    )


if __name__ == "__main__":
    main()
