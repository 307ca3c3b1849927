from __future__ import annotations

from pathlib import Path

import pytest

from compressor import PassContext, VerificationError, load_model
from passes import MagnitudePrune
from targets import backends_for, lower
from targets.base import Compiled
from targets.tvm import TvmBackend


@pytest.mark.parametrize("model", ["lenet300.pt", "lstm.pt", "lenet5.pt", "lstm.pt2"])
def test_tvm_lowering_verifies(zoo: Path, tmp_path: Path, model: str) -> None:
    state = MagnitudePrune(sparsity=0.8).apply(load_model(zoo / model), PassContext()).state
    compiled = lower(state, "cpu", "tvm", tmp_path)
    assert compiled.artifact == tmp_path / "model.so" and compiled.artifact.is_file()
    assert compiled.verify().max_abs_error < 1e-4


def test_negative_index_miscompile_is_worked_around_and_caught(zoo: Path, tmp_path: Path) -> None:
    """The LSTM classifier reads ``out[:, -1]``, which the Relax frontend miscomputes as is."""
    state = load_model(zoo / "lstm.pt")
    target = lower(state, "cpu", "tvm", tmp_path / "fixed").target
    artifact, runner = TvmBackend(fix_indices=False).build(state, target, tmp_path / "raw")
    with pytest.raises(VerificationError, match="differs from the torch model"):
        Compiled(target, "tvm", artifact, runner, state).verify()


def test_tvm_is_opt_in_for_cpu() -> None:
    assert backends_for("cpu") == ["onnxruntime"]
    assert backends_for("cpu", "all") == ["onnxruntime", "tvm"]
