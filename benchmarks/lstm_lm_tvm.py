"""Per-token latency of an LSTM language model at 90% sparsity: TVM with our kernels vs ONNX Runtime
vs torch, each timed alone.

    python benchmarks/lstm_lm_tvm.py                 # hidden 1024 and 2048 (a few minutes)
    python benchmarks/lstm_lm_tvm.py --hidden 1536

The zoo's ``lstm-lm`` architecture (Embedding(98, 32) -> LSTM(hidden) -> Linear(98)), which
takes the state as an input and returns the new one: one call is one step of generation. Every
weight matrix is magnitude-pruned to 90% (``magnitude-prune``, scope layer). Latency depends on
shapes and the sparsity pattern, not on trained values, so the weights are the initialisation's.
The step is taken from a real, non-zero state — the one the model reaches reading 64 characters
of the standard library's source — on the next character: from a zero state a compiler folds
``W_hh @ h`` away and times a model without its recurrent matmul. Each artifact is verified
against torch (on that input, on random states and tokens over the whole vocabulary, and over a
stream of 64 real characters fed back through its own state), then all are timed in turns, each
turn in a fresh process holding only that model (``targets.measure_compiled``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import write
from compressor import PassContext, State, save_checkpoint
from models.text import char_splits
from models.train_lm import stateful_example
from models.zoo import LSTMLM
from passes import MagnitudePrune
from targets import Factory, lower
from targets.runtime.measure import measure_turns, worker_turner

HIDDEN = [1024, 2048]
TIMERS = str(Path(__file__).with_name("timers.py"))


def stream_error(compiled: object, module: LSTMLM, text: np.ndarray, example: tuple) -> float:
    """Feed ``text`` through the artifact one character at a time, carrying its own state, and
    return the worst difference from torch's logits on the way."""
    _, h, c = example
    want_h, want_c = h, c
    worst = 0.0
    for token in text:
        x = torch.tensor([[int(token)]])
        logits, h, c = (torch.from_numpy(a) for a in compiled.run([x.numpy(), h.numpy(), c.numpy()]))
        with torch.no_grad():
            want, want_h, want_c = module(x, want_h, want_c)
        worst = max(worst, float((logits - want).abs().max()))
    return worst


def run(hidden: int, scratch: Path) -> dict:
    torch.manual_seed(0)
    module = LSTMLM(hidden=hidden).eval()
    text = char_splits(64, {"train": 0, "val": 20_000, "test": 0})["x_val"]
    example = stateful_example(module, np.concatenate([text[0], text[1][:1]]))
    state = State(module=module, example_inputs=example)
    pruned = MagnitudePrune(sparsity=0.9, scope="layer").apply(state, PassContext()).state
    tvm = lower(pruned, "cpu", "tvm", scratch / f"tvm{hidden}")
    ort = lower(pruned, "cpu", "onnxruntime", scratch / f"ort{hidden}")
    checks = {}
    for name, compiled in (("tvm", tvm), ("onnxruntime", ort)):
        checks[name] = {
            "verify": compiled.verify().max_abs_error,
            "stream": stream_error(compiled, pruned.module, text[2], example),
        }
        compiled.release()
    checkpoint = scratch / f"lm{hidden}.pt"
    save_checkpoint(checkpoint, "lstm-lm", {"hidden": hidden}, pruned.module, example)
    inputs = scratch / f"inputs{hidden}.npz"
    np.savez(inputs, *[t.numpy() for t in example])
    eager = Factory(TIMERS, "torch_checkpoint", (str(checkpoint), str(inputs)), torch=True)
    with tempfile.TemporaryDirectory() as timing:
        turners = {name: c.turner(Path(timing)) for name, c in (("tvm", tvm), ("onnxruntime", ort))}
        turners["torch"] = worker_turner(eager)
        latency = measure_turns(turners)
    ms = {name: t.median for name, t in latency.items()}
    kernels = {layer["name"]: f"{layer['format']} x{layer['calls']}" for layer in tvm.runner.layers}
    return {
        "hidden": hidden,
        "ms": ms,
        "checks": checks,
        "kernels": kernels,
        "state_norm": float(example[1].norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN)
    args = parser.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for hidden in args.hidden:
            r = run(hidden, Path(scratch))
            results.append(r)
            ms = r["ms"]
            rows.append(
                [
                    hidden,
                    f"{ms['tvm']:.4f}",
                    f"{ms['onnxruntime']:.4f}",
                    f"{ms['torch']:.4f}",
                    f"{ms['onnxruntime'] / ms['tvm']:.2f}x",
                    f"{ms['torch'] / ms['tvm']:.2f}x",
                    ", ".join(f"{k}: {v}" for k, v in r["kernels"].items()),
                ]
            )
            print(rows[-1], flush=True)
    write(
        "lstm_lm_tvm",
        "LSTM LM, 90% sparse, one token per call from a real state: median ms, each runtime alone",
        [
            "hidden",
            "TVM (ours)",
            "ONNX Runtime",
            "torch",
            "vs ONNX Runtime",
            "vs torch",
            "kernels (calls per step)",
        ],
        rows,
        """
Every weight matrix 90% sparse (unstructured, magnitude). ONNX Runtime and torch run the pruned
model densely (they have no sparse kernels); TVM runs it with the kernels our backend chose per
weight by timing them on this machine. The step starts from the state the model reached reading
real text (not zero: the recurrent matmul runs, see the calls per step). All verified against
torch before timing (`results` in the JSON: max errors on random inputs and over a 64-character
stream fed back through each artifact's own state); each timed alone, in turns, each turn in a
fresh process. At hidden 2048 the dense weights (70 MB) stream from DRAM while the sparse ones
(about 10 MB) fit in the 32 MB L3: that is part of what pruning buys a model this size.
""",
        {"results": results},
    )


if __name__ == "__main__":
    main()
