"""DSD (Han et al. 2017) against dense training with the same number of epochs.

    python benchmarks/dsd.py          # about two minutes on 2 cores

LeNet-300-100 on digits, trained from scratch with several seeds. Dense: ``--epochs`` epochs.
DSD: a third of them dense, a third sparse under a 30% per-layer mask, a third dense again at
1/10 of the learning rate (pruned weights restart at zero). Same optimizer, batches and data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean, stdev

import torch
from common import write

from compressor import PassContext, State, load_task
from models.zoo import LeNet300
from passes import DSD, Retrain

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    task = load_task(ZOO / "digits.npz")
    third = args.epochs // 3
    train = {"lr": args.lr, "optimizer": "sgd", "momentum": 0.9, "keep_best": False}
    results: dict[str, list[tuple[float, float]]] = {"dense": [], "dsd": []}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        start = State(module=LeNet300(), example_inputs=(torch.rand(1, 64),), task=task)
        ctx = PassContext(seed=seed)
        dense = Retrain(epochs=3 * third, **train).apply(start, ctx).state
        dsd = DSD(sparsity=args.sparsity, dense_epochs=third, epochs=third, **train).apply(start, ctx).state
        for name, state in (("dense", dense), ("dsd", dsd)):
            results[name].append((task.evaluate(state.module), task.evaluate(state.module, "test")))
    rows = []
    for name, pairs in results.items():
        vals, tests = [v for v, _ in pairs], [t for _, t in pairs]
        errors = [100 - t for t in tests]
        rows.append(
            [
                name,
                3 * third,
                f"{mean(vals):.2f} ± {stdev(vals):.2f}",
                f"{mean(tests):.2f} ± {stdev(tests):.2f}",
                f"{mean(errors):.2f}",
            ]
        )
    gain = mean(t for _, t in results["dsd"]) - mean(t for _, t in results["dense"])
    notes = f"""
DSD minus dense, mean test accuracy: **{gain:+.2f} points** over {args.seeds} seeds (test error
{mean(100 - t for _, t in results["dense"]):.2f}% -> {mean(100 - t for _, t in results["dsd"]):.2f}%).
Accuracy in percent, mean ± standard deviation over seeds; digits splits of 270 validation and
270 test images. Training: SGD, momentum 0.9, lr {args.lr} (DSD's last phase lr {args.lr / 10}),
batch 64, the final weights of each run (no best-epoch selection). DSD: {third} dense +
{third} sparse ({args.sparsity:.0%} per layer) + {third} re-dense epochs. Both models end dense, same size.
"""
    write(
        "dsd",
        "DSD vs dense training, same epochs (LeNet-300-100, digits)",
        ["training", "epochs", "val acc", "test acc", "test error %"],
        rows,
        notes,
        {"results": results, "args": vars(args)},
    )


if __name__ == "__main__":
    main()
