"""Train a character-level LSTM or GRU language model on the standard library's sources.

    python -m models.train_lm --arch char-lstm --out models/zoo      # ~3 minutes on 2 cores
    python -m models.train_lm --arch char-gru --hidden 1024 --steps 20000 --train-bytes 20000000

Writes ``ARCH.pt`` (checkpoint, ``char-lstm`` -> ``char_lstm.pt``) and the data file
``stdlib_chars.npz`` for ``compress --data`` (next-character ids: perplexity is the metric).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.data import Task
from compressor.modelio import save_checkpoint
from compressor.registry import ARCHITECTURES
from models.text import VOCAB, char_splits


def train_lm(
    module: nn.Module, data: dict[str, np.ndarray], steps: int, batch_size: int, lr: float, seed: int = 0
) -> float:
    """Adam with cosine decay and gradient clipping; returns the validation perplexity."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        logits = module(x[idx])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        schedule.step()
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    return Task(tensors, "cross-entropy", "perplexity").evaluate(module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["char-lstm", "char-gru"], default="char-lstm")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "zoo")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-bytes", type=int, default=1_500_000)
    parser.add_argument("--eval-bytes", type=int, default=150_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = char_splits(
        args.seq_len, {"train": args.train_bytes, "val": args.eval_bytes, "test": args.eval_bytes}
    )
    config = {"vocab": VOCAB, "embed": args.embed, "hidden": args.hidden, "layers": args.layers}
    torch.manual_seed(0)
    module = ARCHITECTURES.get(args.arch)(**config)
    start = time.perf_counter()
    perplexity = train_lm(module, data, args.steps, args.batch_size, args.lr)
    example = (torch.from_numpy(data["x_val"][:1]),)
    save_checkpoint(args.out / f"{args.arch.replace('-', '_')}.pt", args.arch, config, module, example)
    np.savez_compressed(args.out / "stdlib_chars.npz", **data)
    params = sum(p.numel() for p in module.parameters())
    print(
        f"{args.arch}: validation perplexity {perplexity:.3f} ({VOCAB} symbols), "
        f"{time.perf_counter() - start:.0f} s of training, {params:,} parameters"
    )


if __name__ == "__main__":
    main()
