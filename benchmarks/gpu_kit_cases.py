"""What the GPU kit's cases are, shared by its build (``gpu_kit.py``) and its run on the GPU
machine (``gpu_kit_run.py``): the shapes, the weights made from each case's seed, and the storage
formats' module loaded without the TVM package around it (numpy only)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "targets" / "runtime"
ZOO = ["lenet300", "lenet5", "lstm", "char_lstm"]  # with the repo, under the 64 MiB a GPU machine takes
BERT = {"layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "seq": 64, "vocab": 2000}
SHAPES = [(2560, 2560), (7680, 2560)]
SPARSITIES = [0.9, 0.95]
BATCHES = [1, 4, 16]
ODD = [(37, 45, 0.7), (130, 67, 0.9), (64, 1000, 0.95), (33, 2, 0.5)]
"""Correctness only: shapes that are no multiple of anything, at several densities."""
ODD_BATCHES = [1, 3]
KINDS = {"csr": (1, 1), "bsr4x1": (4, 1), "bsr1x4": (1, 4)}


def formats_module() -> Any:
    """``targets/tvm/kernels/formats.py`` alone (numpy only), without the TVM package around it."""
    spec = importlib.util.spec_from_file_location("kit_formats", ROOT / "targets/tvm/kernels/formats.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["kit_formats"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def case_weights(n: int, k: int, sparsity: float, seed: int, odd: bool) -> dict[str, np.ndarray]:
    """The weights of one case, from its seed: unstructured and block-pruned to ``sparsity``;
    the odd cases also get an empty first row and a full second one."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, k), dtype=np.float32)
    out = {}
    for kind, (r, c) in KINDS.items():
        keep = rng.random((-(-n // r), -(-k // c))) >= sparsity
        mask = np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[:n, :k]
        if odd:
            mask[0], mask[min(1, n - 1)] = False, True
        out[kind] = dense * mask
    return {"dense": out["csr"], **out}


def case_name(n: int, k: int, sparsity: float, batch: int) -> str:
    return f"{n}x{k}-s{round(sparsity * 100)}-b{batch}"
