"""``sklearn.datasets.load_digits``: 1797 real 8x8 digit images, split deterministically."""

from __future__ import annotations

import numpy as np

LAYOUTS = {"flat": (64,), "sequence": (8, 8), "image": (1, 8, 8)}


def digits_splits(layout: str = "flat", seed: int = 0) -> dict[str, np.ndarray]:
    """``x_train``/``y_train`` (1257), ``x_val``/``y_val`` (270), ``x_test``/``y_test`` (270).

    Pixels scaled to [0, 1]; images flat (N, 64), rows as a sequence (N, 8, 8), or one-channel
    images (N, 1, 8, 8).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x = x.reshape(-1, *LAYOUTS[layout])
    order = np.random.default_rng(seed).permutation(len(x))
    cut = {"train": order[:1257], "val": order[1257:1527], "test": order[1527:]}
    out = {}
    for split, idx in cut.items():
        out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx]
    return out
