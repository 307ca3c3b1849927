"""Train a character-level LSTM or GRU language model on the standard library's sources.

    python -m models.train_lm --arch char-lstm --out models/zoo      # 1-3 minutes on 2 cores
    python -m models.train_lm --arch char-gru --hidden 1024 --steps 20000 --train-bytes 20000000
    python -m models.train_lm --arch lstm-lm --hidden 1536 --steps 2500 --train-bytes 5000000 \
        --lr 2e-3 --store float16 --data-train-bytes 300000 --data-bytes 12000 --data-seq-len 32
        # two hours on 2 cores; --data-only writes only the data file

Writes ``ARCH.pt`` (checkpoint, ``char-lstm`` -> ``char_lstm.pt``) and a data file for
``compress --data`` (next-character ids: perplexity is the metric): ``stdlib_chars.npz``, the
data it trained on, or for ``lstm-lm`` ``lstm_lm_data.npz``, less of it for brief retraining
(``--data-train-bytes``, ``--data-bytes`` for validation and test). ``--store float16`` halves
the checkpoint (the weights load back as float32). ``lstm-lm`` carries its state: its example
input is the token after the first validation window and the state the trained model reached
reading that window.
"""

from __future__ import annotations

import argparse
import copy
import sys
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
STATEFUL_DATA_FILE = "lstm_lm_data.npz"
LOG_EVERY = 250
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def logits_of(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The prediction of a model that may also return its state."""
    return out[0] if isinstance(out, tuple) else out


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
    for step in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        logits = logits_of(module(x[idx]))
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        schedule.step()
        if (step + 1) % LOG_EVERY == 0:
            print(f"step {step + 1}/{steps}: loss {float(loss):.4f}", file=sys.stderr, flush=True)
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    return Task(tensors, "cross-entropy", "perplexity").evaluate(module)


def unigram_perplexity(data: dict[str, np.ndarray]) -> float:
    """The baseline a model must beat: validation perplexity of the training set's character
    frequencies (add-one smoothed), i.e. of a model that ignores the context."""
    counts = np.bincount(data["y_train"].ravel(), minlength=VOCAB) + 1
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[data["y_val"]].mean()))


def stateful_example(module: nn.Module, window: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(the token after ``window``, h, c): the state ``module`` reached reading ``window``, so that
    one step from it is a step of real generation (not from a zero state, which a compiler may
    fold away)."""
    ids = torch.from_numpy(window[None])
    with torch.no_grad():
        _, h, c = module.eval()(ids[:, :-1])
    return ids[:, -1:].clone(), h.clone(), c.clone()


def write_lm(
    arch: str,
    config: dict[str, int],
    data: dict[str, np.ndarray],
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    store: str = "float32",
    saved: dict[str, np.ndarray] | None = None,
) -> tuple[nn.Module, float]:
    """Train ``arch`` and write ``ARCH.pt`` and a data file into ``out``; returns the module
    and its validation perplexity. The checkpoint's example input is the first validation
    window (stateful models: one step after it), so the lowering checks that use it run on
    real text. ``saved`` is the data written (default: ``data``), ``store`` the weights' dtype
    in the file."""
    torch.manual_seed(seed)
    module = ARCHITECTURES.get(arch)(**config)
    perplexity = train_lm(module, data, steps, batch_size, lr, seed)
    if arch == "lstm-lm":
        example = stateful_example(module, data["x_val"][0])
    else:
        example = (torch.from_numpy(data["x_val"][:1]),)
    stored = module if store == "float32" else copy.deepcopy(module).to(STORE_DTYPES[store])
    save_checkpoint(out / f"{arch.replace('-', '_')}.pt", arch, config, stored, example)
    if store != "float32":  # what the file holds is the model: evaluate that
        module.load_state_dict(stored.state_dict())
        tensors = {k: torch.from_numpy(v) for k, v in data.items()}
        perplexity = Task(tensors, "cross-entropy", "perplexity").evaluate(module)
    data_file = STATEFUL_DATA_FILE if arch == "lstm-lm" else DATA_FILE
    np.savez_compressed(out / data_file, **(data if saved is None else saved))
    return module, perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["char-lstm", "char-gru", "lstm-lm"], default="char-lstm")
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
    parser.add_argument("--store", choices=sorted(STORE_DTYPES), default="float32")
    parser.add_argument("--data-bytes", type=int, help="write only this much of each split (default: all)")
    parser.add_argument("--data-train-bytes", type=int, help="of the training split (default: --data-bytes)")
    parser.add_argument("--data-seq-len", type=int, help="window length of the data written")
    parser.add_argument("--data-only", action="store_true", help="write the data file, train nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data_limits = dict.fromkeys(("train", "val", "test"), args.data_bytes or args.eval_bytes)
    data_limits["train"] = args.data_train_bytes or data_limits["train"]
    if args.data_only:
        name = STATEFUL_DATA_FILE if args.arch == "lstm-lm" else DATA_FILE
        np.savez_compressed(args.out / name, **char_splits(args.data_seq_len or args.seq_len, data_limits))
        print(f"wrote {args.out / name}")
        return
    data = char_splits(
        args.seq_len, {"train": args.train_bytes, "val": args.eval_bytes, "test": args.eval_bytes}
    )
    saved = None
    if args.data_bytes or args.data_train_bytes:
        saved = char_splits(args.data_seq_len or args.seq_len, data_limits)
    config = {"vocab": VOCAB, "embed": args.embed, "hidden": args.hidden, "layers": args.layers}
    start = time.perf_counter()
    module, perplexity = write_lm(
        args.arch, config, data, args.out, args.steps, args.batch_size, args.lr, args.seed, args.store, saved
    )
    params = sum(p.numel() for p in module.parameters())
    print(
        f"{args.arch}: validation perplexity {perplexity:.3f} (unigram baseline "
        f"{unigram_perplexity(data):.2f}, {VOCAB} symbols), {time.perf_counter() - start:.0f} s, "
        f"{params:,} parameters"
    )


if __name__ == "__main__":
    main()
