"""Take one timing turn of one model in this process, alone (see ``measure.py``).

    python3 worker.py < request.json

The request names a factory (a Python file, a function in it and its arguments) whose result is
the zero-argument callable to time, and the turn's ``seconds``, ``min_samples`` and ``number``
(runs per sample; null: calibrate). Prints one JSON line: ``{"samples": [...], "number": N}``
(seconds per run of each sample), or ``{"error": "..."}`` with exit 1. Nothing else runs here:
no other runtime's threads can slow the one being timed.
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
        fn = load_function(factory["file"], factory["function"])(*factory.get("args", ()))
        taken = measure.turn(
            measure.loop(fn), request["seconds"], request["min_samples"], request.get("number")
        )
    except Exception as e:
        lines = str(e).strip().splitlines()
        print(json.dumps({"error": f"{type(e).__name__}: {lines[-1] if lines else ''}"}))
        return 1
    print(json.dumps({"samples": list(taken.samples), "number": taken.number}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
