"""Run one model in this process, alone: a timing turn (see ``measure.py``), or its outputs.

    python3 worker.py < request.json

The request names a factory (a Python file, a function in it and its arguments). To *time*, the
factory returns the zero-argument callable to time and the request gives the turn's
``seconds``, ``min_samples`` and ``number`` (runs per sample; null: calibrate); the reply is
``{"samples": [...], "number": N}`` (seconds per run of each sample). To *run*, the factory
returns a function from a list of input arrays to a list of output arrays, and the request's
``run`` names an ``.npz`` of cases (``t{case}_{input}``) and the ``.npz`` to write the outputs
to (``t{case}_{output}``); the reply is ``{"cases": N}``. Errors reply ``{"error": "..."}``
with exit 1. Nothing else runs here: no other runtime's threads can slow the one being timed,
and the artifact's memory is the worker's, returned when it exits.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402  (beside this file, here or in a bundle)


def load_function(file: str, function: str) -> Any:
    spec = importlib.util.spec_from_file_location(Path(file).stem, file)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return getattr(module, function)


def main() -> int:
    request = json.loads(sys.stdin.read())
    factory = request["factory"]
    if not factory.get("torch"):
        sys.modules["torch"] = None  # type: ignore[assignment]  # tvm_ffi imports torch if it can
    try:
        made = load_function(factory["file"], factory["function"])(*factory.get("args", ()))
        reply = run_cases(made, request["run"]) if "run" in request else time_turn(made, request)
    except Exception as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        print(json.dumps({"error": f"{type(e).__name__}: {' / '.join(lines)[:500]}"}))
        return 1
    print(json.dumps(reply))
    return 0


def time_turn(fn: Any, request: dict[str, Any]) -> dict[str, Any]:
    taken = measure.turn(measure.loop(fn), request["seconds"], request["min_samples"], request.get("number"))
    return {"samples": list(taken.samples), "number": taken.number}


def run_cases(run: Any, spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    with np.load(spec["inputs"]) as archive:
        cases = [[archive[f"t{t}_{i}"] for i in range(spec["arity"])] for t in range(spec["cases"])]
    outputs = {}
    for t, inputs in enumerate(cases):
        outputs.update({f"t{t}_{o}": np.asarray(y) for o, y in enumerate(run(inputs))})
    np.savez(spec["outputs"], **outputs)
    return {"cases": len(cases)}


if __name__ == "__main__":
    sys.exit(main())
