"""Character-level LSTM language model: 90% sparse by one-shot pruning + retraining vs Narang's
gradual pruning with the same number of training steps; and DSD vs dense fine-tuning.

    python benchmarks/char_lstm_pruning.py        # about 4 minutes on 2 cores

Starts from the trained ``models/zoo/char_lstm.pt`` (``python -m models.train_lm``). Recurrent
and output-layer weights are pruned (Narang 2017 prunes recurrent and linear layers; the small
embedding stays dense), each to 90%. Every variant trains ``--steps`` steps with the same
optimizer, batches and seed; the final weights are evaluated (no best-epoch selection).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, write

from compressor import PassContext, Pipeline, load_model, load_task
from compressor.plots import render
from passes import DSD, GradualPrune, MagnitudePrune, Retrain

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
LAYERS = ("rnn.weight_*", "head.weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    task = load_task(ZOO / "stdlib_chars.npz")
    dense = load_model(ZOO / "char_lstm.pt", task=task)
    train = {"steps": args.steps, "lr": args.lr, "batch_size": 32, "clip_grad_norm": 1.0, "keep_best": False}
    # Prune during the first 40% of the steps (ramp from 20%), recover under the final masks after.
    window = {"start_itr": 0, "ramp_itr": args.steps // 5, "end_itr": 2 * args.steps // 5}
    variants = {
        "dense (trained)": Pipeline([]),
        f"dense + {args.steps} steps (control)": Pipeline([Retrain(**train)]),
        f"one-shot {args.sparsity:.0%} + retrain {args.steps} steps": Pipeline(
            [MagnitudePrune(sparsity=args.sparsity, scope="layer", layers=LAYERS), Retrain(**train)]
        ),
        f"gradual (Narang, revive) to {args.sparsity:.0%} in {args.steps} steps": Pipeline(
            [GradualPrune(sparsity=args.sparsity, layers=LAYERS, freq=10, **window, **train)]
        ),
        f"gradual (Narang, hard mask) to {args.sparsity:.0%} in {args.steps} steps": Pipeline(
            [GradualPrune(sparsity=args.sparsity, layers=LAYERS, freq=10, revive=False, **window, **train)]
        ),
        f"DSD 30% ({args.steps // 2} sparse + {args.steps // 2} dense steps)": Pipeline(
            [DSD(sparsity=0.3, layers=LAYERS, **{**train, "steps": args.steps // 2})]
        ),
    }
    rows, data = [], {}
    for name, pipeline in variants.items():
        state = pipeline.run(dense, PassContext(seed=0))
        stats = state.stats()
        val, test = task.evaluate(state.module), task.evaluate(state.module, "test")
        pruned = (
            {k: v for k, v in state.history[-1].changes.get("layer_sparsity", {}).items()}
            if state.history
            else {}
        )
        data[name] = {
            "val": val,
            "test": test,
            "nonzeros": stats.nonzeros,
            "params": stats.params,
            "layer_sparsity": pruned,
            "recipe": str(pipeline),
        }
        rows.append([name, f"{stats.nonzeros:,} / {stats.params:,}", f"{val:.3f}", f"{test:.3f}"])
        for record in state.history:
            for spec in record.changes.get("plots", []):
                if record.name == "gradual-prune" and "revive" in name:
                    render(spec, RESULTS / "char_lstm_gradual_threshold.png")
    one_shot, gradual = (data[n]["test"] for n in list(variants)[2:4])
    winner = "gradual wins" if gradual < one_shot else "one-shot wins"
    relative = 100 * (one_shot - gradual) / one_shot
    notes = f"""
Gradual pruning vs one-shot + retraining at {args.sparsity:.0%}, test perplexity: **{gradual:.3f} vs
{one_shot:.3f}** ({winner}, {relative:+.1f}% relative). Perplexity (lower is better) on the
validation and test splits of the standard-library corpus (files split by name). Nonzeros
count all parameters. Training per variant: {train}, Adam. Gradual pruning: {window}
(pruning in the first 40% of the steps, recovery under the final masks after), θ chosen per
layer for the target sparsity, φ = 1.5θ, updates every 10 steps. The threshold schedule of the
gradual run: `results/char_lstm_gradual_threshold.png`.
"""
    write(
        "char_lstm_pruning",
        "char-LSTM language model: one-shot vs gradual pruning, and DSD",
        ["variant", "nonzero / params", "val perplexity", "test perplexity"],
        rows,
        notes,
        {"variants": data, "args": vars(args), "window": window},
    )


if __name__ == "__main__":
    main()
