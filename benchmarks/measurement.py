"""Are the latencies ``compress`` reports the ones a user gets? Reported vs a standalone session.

    python benchmarks/measurement.py                    # the zoo models and a BERT-style encoder
    python benchmarks/measurement.py --models lenet300 bert-mini

For each model, ``compress MODEL --backend all --sparsity 0.9`` runs as a user runs it; then
each artifact it wrote is timed again by a plain script in a fresh process that holds that one
session and nothing else (ONNX Runtime's ``InferenceSession``, or TVM's ``relax.VirtualMachine``
through the full ``tvm`` package: not the code ``compress`` times with; numpy in, numpy out, as
a caller runs it), three times, the
backends alternating. The table compares the reported median with the median of the three
standalone medians.

That comparison spans minutes, and this shared machine has slow spells of seconds to minutes
(the same standalone script, run twice a minute apart, can differ 1.5-2x): the spread of the
three standalone runs is in the table as the noise floor. So the method itself is also compared
side by side: ``ROUNDS`` rounds, each a turn of ``compress``'s own timer (``worker.py`` with the
runner ``compress`` uses, as many samples as one of its turns) right before a standalone run;
the median of the rounds' ratios is what the timing method adds or loses, with the machine's
drift between neighbouring runs mostly cancelled. That one should be within 10%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import write
from models.real import MODELS, export
from targets.base import LocalRunner
from targets.runtime.measure import TURNS, worker_turner
from targets.tvm import set_threads, tvm_runtime_libs

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
ZOO_MODELS = ["lenet300", "lenet5", "lstm", "char_lstm", "char_gru", "lstm_lm"]
STANDALONE_RUNS = 3
ROUNDS = 7
TOLERANCE = 0.10

STANDALONE = r"""
import sys, time, os
import numpy as np
backend, artifact, inputs = sys.argv[1:4]
arrays = [np.load(inputs)[f"arr_{i}"] for i in range(len(np.load(inputs).files))]
threads = os.cpu_count()
if backend == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], arrays))
    run = lambda: session.run(None, feed)
else:
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm
    from tvm import relax
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(artifact), dev)
    main = vm["main"]
    params = np.load(artifact.rsplit("/", 1)[0] + "/params.npz")  # the weights, in main's order
    params = [tvm.runtime.tensor(params[f"arr_{i}"], dev) for i in range(len(params.files))]
    held = [tvm.runtime.empty(a.shape, str(a.dtype), dev) for a in arrays]
    fetch = lambda o: o.numpy() if hasattr(o, "numpy") else [fetch(v) for v in o]
    def run():  # what a caller does: numpy in, numpy out
        for tensor, a in zip(held, arrays):
            tensor.copyfrom(a)
        return fetch(main(*held, *params))
start = time.perf_counter()
while time.perf_counter() - start < 0.3:
    run()
once = time.perf_counter(); run(); once = time.perf_counter() - once
number = max(1, int(0.005 / max(once, 1e-9)) + 1)
samples = []
start = time.perf_counter()
while time.perf_counter() - start < 1.0 or len(samples) < 30:
    t = time.perf_counter()
    for _ in range(number):
        run()
    samples.append((time.perf_counter() - t) / number * 1e3)
print(sorted(samples)[len(samples) // 2])
"""


def model_file(name: str, folder: Path) -> Path:
    if name in MODELS:
        path = folder / f"{name}.pt2"
        export(*MODELS[name](), path)
        return path
    return ZOO / f"{name}.pt"


def standalone(backend: str, artifact: Path, inputs: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STANDALONE, backend, str(artifact), str(inputs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode != 0:
        raise SystemExit(f"standalone timing of {artifact} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def compress_turn(backend: str, artifact: Path, inputs: Path, arity: int) -> float:
    """One turn of the timer ``compress`` uses (a fresh ``worker.py``, the same runner and the
    same samples per turn as one of its three turns); its median in ms."""
    libs = tvm_runtime_libs() if backend == "tvm" else None
    runner = LocalRunner(backend, artifact, "cpu", set_threads(), libs)
    timer = runner.timer(str(inputs), [f"arr_{i}" for i in range(arity)])
    taken = worker_turner(timer)(1.0 / TURNS, math.ceil(30 / TURNS), None)
    return float(np.median(taken.samples)) * 1e3


def run(name: str, folder: Path) -> list[dict]:
    model = model_file(name, folder)
    out = folder / f"{name}-out"
    command = [str(Path(sys.executable).with_name("compress")), str(model), "--backend", "all"]
    command += ["--sparsity", "0.9", "--json", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compress failed on {name}: {done.stderr.strip().splitlines()[-1:]}")
    report = json.loads(done.stdout)
    example = torch.export.load(out / "model.pt2").example_inputs[0]
    inputs = folder / f"{name}-inputs.npz"
    np.savez(inputs, *[t.numpy() for t in example])
    entries = report["targets"]
    alone: dict[str, list[float]] = {e["backend"]: [] for e in entries}
    for _ in range(STANDALONE_RUNS):  # the backends alternate
        for e in entries:
            alone[e["backend"]].append(standalone(e["backend"], out / e["artifact"], inputs))
    paired: dict[str, list[tuple[float, float]]] = {e["backend"]: [] for e in entries}
    for _ in range(ROUNDS):
        for e in entries:
            ours = compress_turn(e["backend"], out / e["artifact"], inputs, len(example))
            paired[e["backend"]].append((ours, standalone(e["backend"], out / e["artifact"], inputs)))
    results = []
    for e in entries:
        median = statistics.median(alone[e["backend"]])
        reported = e["latency_ms"]["median"]
        rounds = paired[e["backend"]]
        results.append(
            {
                "model": name,
                "backend": e["backend"],
                "reported_ms": reported,
                "turn_medians_ms": e["latency_ms"]["turn_medians"],
                "standalone_ms": alone[e["backend"]],
                "ratio": reported / median,
                "standalone_spread": max(alone[e["backend"]]) / min(alone[e["backend"]]),
                "rounds_ms": rounds,
                "paired_ratio": statistics.median(a / b for a, b in rounds),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*ZOO_MODELS, "bert-mini"])
    parser.add_argument("--name", default="measurement")
    args = parser.parse_args()
    results, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for r in run(name, Path(tmp)):
                results.append(r)
                rows.append(
                    [
                        r["model"],
                        r["backend"],
                        f"{r['reported_ms']:.4g}",
                        ", ".join(f"{t:.4g}" for t in r["standalone_ms"]),
                        f"{r['ratio']:.3f}",
                        f"{r['standalone_spread']:.2f}",
                        f"{r['paired_ratio']:.3f}",
                        "yes" if abs(r["paired_ratio"] - 1) <= TOLERANCE else "**no**",
                    ]
                )
                print(rows[-1], flush=True)
    within = sum(abs(r["ratio"] - 1) <= TOLERANCE for r in results)
    paired = sum(abs(r["paired_ratio"] - 1) <= TOLERANCE for r in results)
    write(
        args.name,
        "Reported latency vs a standalone session of the same artifact (ms, batch 1)",
        [
            "model",
            "backend",
            "compress reported",
            "standalone (3 runs)",
            "reported / standalone",
            "standalone max / min",
            f"side by side ({ROUNDS} rounds)",
            "side by side within 10%",
        ],
        rows,
        f"""
`compress MODEL --backend all --sparsity 0.9`, then each compressed artifact it wrote timed by a
plain script in a fresh process (one session, 0.3 s warm-up, then at least 1 s and 30 samples of
back-to-back runs; median), three times, the backends alternating; *reported / standalone* is
the reported median over the median of the three: {within} of {len(results)} within 10%.
*Standalone max / min* is how much the same script's three runs disagree: the machine's drift
over those minutes. *Side by side*: the median over {ROUNDS} rounds of (a turn of compress's
timer) / (a standalone run right after it): {paired} of {len(results)} within 10%.
""",
        {"results": results},
    )


if __name__ == "__main__":
    main()
