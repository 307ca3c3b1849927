"""Train a character-level LSTM or GRU language model on the standard library's sources.

    python -m models.train_lm --arch char-lstm --out models/zoo      # 1-3 minutes on 2 cores
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

DATA_FILE = "stdlib_chars.npz"


def train_lm(
    module: nn.Module, data: dict[str, np.ndarray], steps: int, batch_size: int, lr: float, seed: int = 0
) -> float:
    """Adam with cosine decay and gradient clipping (an RNN's gradients spike without it);
    returns the validation perplexity."""
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


def unigram_perplexity(data: dict[str, np.ndarray]) -> float:
    """The baseline a model must beat: validation perplexity of the training set's character
    frequencies (add-one smoothed), i.e. of a model that ignores the context."""
    counts = np.bincount(data["y_train"].ravel(), minlength=VOCAB) + 1
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[data["y_val"]].mean()))


def write_lm(
    arch: str,
    config: dict[str, int],
    data: dict[str, np.ndarray],
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """Train ``arch`` and write ``ARCH.pt`` and the data file into ``out``; returns the module
    and its validation perplexity. The checkpoint's example input is the first validation
    window, so the lowering checks that use it run on real text."""
    torch.manual_seed(seed)
    module = ARCHITECTURES.get(arch)(**config)
    perplexity = train_lm(module, data, steps, batch_size, lr, seed)
    example = (torch.from_numpy(data["x_val"][:1]),)
    save_checkpoint(out / f"{arch.replace('-', '_')}.pt", arch, config, module, example)
    np.savez_compressed(out / DATA_FILE, **data)
    return module, perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["char-lstm", "char-gru"], default="char-lstm")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "zoo")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-bytes", type=int, default=1_500_000)
    parser.add_argument("--eval-bytes", type=int, default=150_000, help="for validation and for test each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = char_splits(
        args.seq_len, {"train": args.train_bytes, "val": args.eval_bytes, "test": args.eval_bytes}
    )
    config = {"vocab": VOCAB, "embed": args.embed, "hidden": args.hidden, "layers": args.layers}
    start = time.perf_counter()
    module, perplexity = write_lm(
        args.arch, config, data, args.out, args.steps, args.batch_size, args.lr, args.seed
    )
    params = sum(p.numel() for p in module.parameters())
    print(
        f"{args.arch}: validation perplexity {perplexity:.3f} (unigram baseline "
        f"{unigram_perplexity(data):.2f}, {VOCAB} symbols), {time.perf_counter() - start:.0f} s, "
        f"{params:,} parameters"
    )


if __name__ == "__main__":
    main()
