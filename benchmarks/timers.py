"""Callables the timing worker makes for benchmarks (``targets.runtime.measure.Factory``).

The worker loads this file by its path and calls one of these with JSON arguments; each returns
the zero-argument callable that is timed, alone in that process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torch_checkpoint(path: str, inputs: str) -> Callable[[], object]:
    """Eager torch on a checkpoint of ``compressor.save_checkpoint``, every core, no autograd."""
    import os

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from compressor import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    module = load_model(path).module.eval()
    with np.load(inputs) as archive:
        arrays = [torch.from_numpy(archive[f"arr_{i}"]) for i in range(len(archive.files))]

    def run() -> object:
        with torch.inference_mode():
            return module(*arrays)

    return run
