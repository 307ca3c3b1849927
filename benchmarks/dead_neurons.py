"""Structured pruning of half the LSTM hidden units + dead-neuron removal on the zoo char-LSTM:
parameters, ONNX file size and ONNX Runtime latency before and after, measured side by side.

    python benchmarks/dead_neurons.py        # about a minute on 2 cores

The same job as ``compress models/zoo/char_lstm.pt --data models/zoo/stdlib_chars.npz
--recipe RECIPE``: the compressed and the original model are both lowered to ONNX, verified
against torch and timed on this CPU, each alone in turns (one 64-character sequence per run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import write

from compressor import Job, run_job

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of hidden units to remove")
    parser.add_argument("--retrain-steps", type=int, default=600)
    args = parser.parse_args()
    recipe = (
        f"[structured-prune: {{sparsity: {args.sparsity}, layers: [rnn]}}, "
        f"retrain: {{steps: {args.retrain_steps}, lr: 0.001, batch_size: 32, clip_grad_norm: 1.0}}, "
        "remove-dead-neurons]"
    )
    with tempfile.TemporaryDirectory() as tmp:
        report = run_job(
            Job(
                model=ZOO / "char_lstm.pt",
                data=ZOO / "stdlib_chars.npz",
                recipe=recipe,
                backend="onnxruntime",  # removal makes the dense runtime faster: measure that one
                out=Path(tmp) / "out",
            )
        )
    (target,) = report["targets"]
    lat, dense = target["latency_ms"], target["dense_latency_ms"]
    removal = next(p for p in report["passes"] if p["name"] == "remove-dead-neurons")
    rows = [
        [
            "parameters",
            f"{report['params_before']:,}",
            f"{report['params_after']:,}",
            f"{report['params_before'] / report['params_after']:.2f}x fewer",
        ],
        [
            "ONNX file (bytes)",
            f"{target['dense_artifact_bytes']:,}",
            f"{target['artifact_bytes']:,}",
            f"{target['dense_artifact_bytes'] / target['artifact_bytes']:.2f}x smaller",
        ],
        [
            "ONNX Runtime latency, ms (median, p10-p90)",
            f"{dense['median']:.3f} ({dense['p10']:.3f}-{dense['p90']:.3f})",
            f"{lat['median']:.3f} ({lat['p10']:.3f}-{lat['p90']:.3f})",
            f"{target['speedup']:.2f}x faster",
        ],
        ["validation perplexity", f"{report['metric_before']:.3f}", f"{report['metric_after']:.3f}", ""],
    ]
    notes = f"""
Recipe: `{recipe}`. Removed units: {removal["changes"]["removed"]}. Verified against torch:
max abs error {target["max_abs_error"]:.2e} (tolerance {target["tolerance"]:.2e}). Latency: ONNX Runtime
CPU execution provider, {target["threads"]} threads, batch 1 x 64 characters, {lat["samples"]} samples of
each model over 3 turns, each turn in a fresh process holding that model only.
"""
    write(
        "dead_neurons",
        "char-LSTM LM: 50% of hidden units pruned and removed (ONNX Runtime, CPU)",
        ["", "before", "after", "change"],
        rows,
        notes,
        {"report": report, "recipe": recipe},
    )


if __name__ == "__main__":
    main()
