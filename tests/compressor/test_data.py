from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor import DataError, load_task


def _write(path: Path, y_train: np.ndarray, y_val: np.ndarray, x_shape=(6, 4)) -> Path:
    np.savez(
        path,
        x_train=np.random.rand(*x_shape).astype(np.float32),
        y_train=y_train,
        x_val=np.random.rand(*x_shape).astype(np.float32),
        y_val=y_val,
    )
    return path


def test_classification_is_inferred_and_scored(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    task = load_task(_write(tmp_path / "d.npz", y, y))
    assert (task.loss, task.metric, task.higher_is_better) == ("cross-entropy", "accuracy", True)
    model = nn.Linear(4, 3)
    x_val, _ = task.split("val")
    expected = 100 * float((model(x_val).argmax(-1) == torch.from_numpy(y)).float().mean())
    assert task.evaluate(model) == pytest.approx(expected, abs=1e-3)


def test_next_token_is_perplexity(tmp_path: Path) -> None:
    y = np.random.randint(0, 5, (6, 3))
    task = load_task(_write(tmp_path / "d.npz", y, y, x_shape=(6, 3, 4)))
    assert task.metric == "perplexity"
    uniform = nn.Linear(4, 5)
    nn.init.zeros_(uniform.weight)
    nn.init.zeros_(uniform.bias)
    assert task.evaluate(uniform) == pytest.approx(5.0, rel=1e-5)  # uniform over 5 classes


def test_regression_and_overrides(tmp_path: Path) -> None:
    y = np.random.rand(6, 2).astype(np.float32)
    task = load_task(_write(tmp_path / "d.npz", y, y))
    assert (task.loss, task.metric) == ("mse", "mse")
    with pytest.raises(DataError, match="unknown metric 'f1'"):
        load_task(tmp_path / "d.npz", metric="f1")


def test_bad_data_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task(tmp_path / "none.npz")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="has no 'y_train'"):
        load_task(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read data file"):
        load_task(tmp_path / "junk.npz")


def test_data_that_does_not_fit_the_model(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    task = load_task(_write(tmp_path / "d.npz", y, y))
    with pytest.raises(DataError, match=r"x_val of shape \(6, 4\) does not fit the model"):
        task.evaluate(nn.Linear(7, 3))
