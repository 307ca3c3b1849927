from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compressor import ConfigError, PassContext, State, VerificationError, load_model
from passes import MagnitudePrune
from targets import backends_for, lower
from targets.onnxruntime import OrtRunner


@pytest.mark.parametrize("model", ["lenet300.pt", "lstm.pt", "lenet300.pt2", "lstm.pt2"])
def test_lowered_model_verifies(zoo: Path, tmp_path: Path, model: str) -> None:
    """Includes the LSTM classifier, whose forward takes ``out[:, -1]``."""
    state = MagnitudePrune(sparsity=0.9).apply(load_model(zoo / model), ctx=PassContext()).state
    compiled = lower(state, "cpu", "onnxruntime", tmp_path)
    assert compiled.artifact == tmp_path / "model.onnx" and compiled.artifact.is_file()
    result = compiled.verify()
    assert result.trials == 4
    assert result.max_abs_error <= 1e-4


def test_pruned_zeros_reach_the_artifact(lenet_state: State, tmp_path: Path) -> None:
    state = MagnitudePrune(sparsity=0.9).apply(lenet_state, ctx=PassContext()).state
    compiled = lower(state, "cpu", "onnxruntime", tmp_path)
    weights = [numpy_helper.to_array(t) for t in onnx.load(compiled.artifact).graph.initializer]
    matrices = [w for w in weights if w.ndim == 2]
    zeros = sum(int((w == 0).sum()) for w in matrices)
    assert zeros == sum(int((~m).sum()) for m in state.masks.values())


def test_corrupted_artifact_fails_verification(lenet_state: State, tmp_path: Path) -> None:
    compiled = lower(lenet_state, "cpu", "onnxruntime", tmp_path)
    model = onnx.load(compiled.artifact)
    tensor = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 2)
    weights = numpy_helper.to_array(tensor).copy()
    weights[0, :] += 0.5  # one output unit wrong
    tensor.CopyFrom(numpy_helper.from_array(weights, tensor.name))
    onnx.save(model, compiled.artifact)
    compiled.runner = OrtRunner(compiled.artifact, threads=1)
    with pytest.raises(VerificationError, match="differs from the torch model"):
        compiled.verify()


def test_an_artifact_returning_nan_fails_verification(lenet_state: State, tmp_path: Path) -> None:
    """One NaN in the ONNX file's weights: the artifact returns NaN, torch does not."""
    compiled = lower(lenet_state, "cpu", "onnxruntime", tmp_path)
    model = onnx.load(compiled.artifact)
    tensor = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 2)
    weights = numpy_helper.to_array(tensor).copy()
    weights[3, 7] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(weights, tensor.name))
    onnx.save(model, compiled.artifact)
    with pytest.raises(
        VerificationError, match="artifact output 0 holds NaN where the torch model's is finite"
    ):
        compiled.verify()
    assert compiled.verification is None  # nothing to report


def test_measure_reports_percentiles(lenet_state: State, tmp_path: Path) -> None:
    latency = lower(lenet_state, "cpu", None, tmp_path).measure(min_samples=5, min_seconds=0.05)
    assert latency.samples >= 5 and latency.runs >= latency.samples
    assert 0 < latency.p10 <= latency.median <= latency.p90


def test_backend_choice() -> None:
    assert backends_for("cpu") == backends_for("cpu", "all") == ["onnxruntime", "tvm"]
    assert backends_for("cpu", "onnxruntime") == ["onnxruntime"]
    with pytest.raises(
        ConfigError, match="unknown backend 'tensorrt'; choose auto, all or one of: onnxruntime"
    ):
        backends_for("cpu", "tensorrt")
    with pytest.raises(ConfigError, match="unknown target 'gpu'; known targets are: arm64, cpu"):
        backends_for("gpu")
