"""Per-token latency of the char-LSTM LM at 90% sparsity: TVM with our kernels vs ONNX Runtime vs torch.

    python benchmarks/lstm_lm_tvm.py

The zoo's char-LSTM architecture (Embedding(98, 32) -> LSTM(hidden) -> Linear(98)) at hidden
1024 and 2048, every weight matrix magnitude-pruned to 90% (``magnitude-prune``, scope layer).
One token per call (input 1x1, the LSTM starting from zero state): the work of one step of
generation. Latency depends on shapes and the sparsity pattern, not on trained values, so the
weights are the initialisation's; magnitude pruning of them gives an unstructured pattern.
Each artifact is verified against torch first; the three take turns sample by sample.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import write
from compressor import PassContext, State
from models.zoo import char_lstm
from passes import MagnitudePrune
from targets import lower, measure

HIDDEN = [1024, 2048]


def run(hidden: int, scratch: Path) -> dict:
    torch.manual_seed(0)
    token = torch.zeros(1, 1, dtype=torch.long)
    state = State(module=char_lstm(hidden=hidden).eval(), example_inputs=(token,))
    pruned = MagnitudePrune(sparsity=0.9, scope="layer").apply(state, PassContext()).state
    tvm = lower(pruned, "cpu", "tvm", scratch / f"tvm{hidden}")
    ort = lower(pruned, "cpu", "onnxruntime", scratch / f"ort{hidden}")
    errors = {"tvm": tvm.verify().max_abs_error, "onnxruntime": ort.verify().max_abs_error}
    module, x = pruned.module, pruned.example_inputs[0]

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    fns = {"tvm": tvm.timer(), "onnxruntime": ort.timer(), "torch": eager}
    latency = measure(fns, min_samples=30, min_seconds=1.0, settle_seconds=0.02)
    ms = {name: t.median for name, t in latency.items()}
    kernels = {layer["name"]: layer["format"] for layer in tvm.runner.layers}
    return {"hidden": hidden, "ms": ms, "max_abs_error": errors, "kernels": kernels}


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    rows, results = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for hidden in HIDDEN:
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
        "char-LSTM LM, 90% sparse, one token per call: median ms",
        ["hidden", "TVM (ours)", "ONNX Runtime", "torch", "vs ONNX Runtime", "vs torch", "kernels chosen"],
        rows,
        """
Every weight matrix 90% sparse (unstructured, magnitude). ONNX Runtime and torch run the pruned
model densely (they have no sparse kernels); TVM runs it with the kernels our backend chose per
weight by timing them on this machine. All three verified against torch before timing.
""",
        {"results": results},
    )


if __name__ == "__main__":
    main()
