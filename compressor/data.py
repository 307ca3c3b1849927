"""Tasks: data + loss + metric, read from an ``.npz`` or a ``.pt`` dict of tensors.

Integer labels of shape (N,) mean classification (cross-entropy, accuracy); integer labels
shaped like the model's per-position output mean next-token modelling (cross-entropy,
perplexity); float labels mean regression (MSE, metric mse). ``loss``/``metric`` override it.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import DataError
from compressor.state import set_eval

SPLITS = ("train", "val", "test")
LOSSES = ("cross-entropy", "mse")
METRICS = {"accuracy": True, "perplexity": False, "mse": False}
"""Metric name -> whether higher is better."""


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y.to(out.dtype).reshape(out.shape))


LOSS_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross-entropy": _cross_entropy,
    "mse": _mse,
}


def prediction(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The first output: what the loss and the metric judge (a recurrent model may return its
    state after it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass(frozen=True)
class Task:
    """Tensors per split (``x_train``, ``y_train``, ...), a loss name and a metric name."""

    tensors: dict[str, torch.Tensor]
    loss: str
    metric: str

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors[f"x_{name}"], self.tensors[f"y_{name}"]

    def loss_fn(self, out: torch.Tensor | tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        return LOSS_FNS[self.loss](prediction(out), y)

    def evaluate(self, module: nn.Module, split: str = "val", batch_size: int = 512) -> float:
        """The metric of ``module`` on ``split`` (accuracy in percent)."""
        x, y = self.split(split)
        set_eval(module)
        total, correct, n = 0.0, 0, 0
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                try:
                    out = module(xb)
                except Exception as e:
                    raise DataError(
                        f"x_{split} of shape {tuple(x.shape)} does not fit the model "
                        f"({type(e).__name__}: {str(e).splitlines()[0]}); check --data"
                    ) from None
                out = prediction(out)
                if self.metric == "accuracy":
                    correct += int((out.argmax(-1) == yb).sum())
                else:
                    total += float(self.loss_fn(out, yb)) * yb.numel()
                n += yb.numel()
        if self.metric == "accuracy":
            return round(100.0 * correct / n, 4)
        mean = total / n
        return round(math.exp(mean) if self.metric == "perplexity" else mean, 6)


def load_task(path: str | Path, loss: str | None = None, metric: str | None = None) -> Task:
    """Read a data file (see module docstring) into a ``Task``."""
    tensors = _read(Path(path))
    for key in ("x_train", "y_train", "x_val", "y_val"):
        if key not in tensors:
            raise DataError(
                f"data file {str(path)!r} has no {key!r}; it needs x_train, y_train, x_val, y_val"
            )
    for split in SPLITS:
        if f"x_{split}" in tensors and len(tensors[f"x_{split}"]) != len(tensors.get(f"y_{split}", [])):
            raise DataError(f"x_{split} and y_{split} in {str(path)!r} differ in length")
    y = tensors["y_train"]
    integer = not torch.is_floating_point(y)
    inferred_loss = "cross-entropy" if integer else "mse"
    inferred_metric = ("accuracy" if y.dim() == 1 else "perplexity") if integer else "mse"
    loss, metric = loss or inferred_loss, metric or inferred_metric
    if loss not in LOSSES:
        raise DataError(f"unknown loss {loss!r}; known losses are: {', '.join(LOSSES)}")
    if metric not in METRICS:
        raise DataError(f"unknown metric {metric!r}; known metrics are: {', '.join(METRICS)}")
    return Task(tensors, loss, metric)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; give an .npz or .pt file to --data")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            raw = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"cannot read data file {str(path)!r} ({str(e).splitlines()[0]}); "
            "it must be an .npz or a torch.save'd dict of tensors"
        ) from None
    except Exception as e:  # the restricted unpickler raises pickle.UnpicklingError and others
        raise DataError(
            f"cannot read data file {str(path)!r} ({type(e).__name__}); "
            "it must be an .npz or a torch.save'd dict of tensors"
        ) from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise DataError(f"data file {str(path)!r} must hold a dict of tensors")
    return {k: v.float() if torch.is_floating_point(v) else v.long() for k, v in raw.items()}
