"""The cuda target. Without a GPU: the artifacts of the zoo models build (nvcc compiles the TVM
kernels), their bundles load, and the run ends with one error keeping them. With a GPU (skipped
here): the same models through the TVM backend, verified and measured on it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compressor import DeviceError, Job, run_job
from targets import cuda
from targets.remote import LOCAL
from targets.runtime.run import read_manifest
from targets.tvm import GPU_SPARSE_AT

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
MODELS = ("lenet300.pt", "lstm.pt", "lenet5.pt")


def has_gpu() -> bool:
    return cuda.gpu(LOCAL) is not None


def test_arch_comes_from_the_gpu_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    if has_gpu():
        assert cuda.arch(LOCAL).startswith("sm_")
        return
    monkeypatch.delenv("COMPRESSOR_CUDA_ARCH", raising=False)
    assert cuda.tvm_target(LOCAL)["arch"] == "sm_80"
    monkeypatch.setenv("COMPRESSOR_CUDA_ARCH", "sm_90a")
    target = cuda.tvm_target(LOCAL)
    assert target["kind"] == "cuda" and target["arch"] == "sm_90a" and target["host"]["kind"] == "llvm"


@pytest.mark.skipif(has_gpu(), reason="a GPU is here: the runs are verified instead (test below)")
@pytest.mark.parametrize("model", MODELS)
def test_without_a_gpu_both_backends_build_and_are_kept(model: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DeviceError, match="no CUDA GPU on this host .*what was built is kept"):
        run_job(Job(model=ZOO / model, targets=("cuda",), sparsity=0.9, out=out))
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == [] and "cuda/tvm" in report["error"] and "cuda/onnxruntime" in report["error"]
    for backend, artifact in (("tvm", "model.so"), ("onnxruntime", "model.onnx")):
        manifest = read_manifest(out / f"cuda-{backend}")  # every file present and matching its hash
        assert manifest["artifact"] == artifact and manifest["device"] == "cuda"
        assert manifest["trials"] == 4 and manifest["num_outputs"] == 1
    source = (out / "cuda-tvm" / "model.cu").read_text()
    assert source.count("__global__") >= 2  # the GPU kernels nvcc compiled into model.so
    kernels = read_manifest(out / "cuda-tvm")["kernels"]
    sparse = [k["name"] for k in kernels if k["format"] == "csr-u1"]  # ours: sparsity >= 75%
    assert sparse and all(k["format"] == "tvm-matmul" for k in kernels if k["sparsity"] < GPU_SPARSE_AT)
    assert len(set(re.findall(r"csr_u1_\d+_kernel", source))) == len(sparse)  # our CSR kernel per weight
    assert (out / "cuda-tvm" / "model.so").stat().st_size > (out / "cuda-tvm" / "model.cu").stat().st_size / 4


@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", MODELS)
def test_on_the_gpu_tvm_verifies_and_measures(model: str, tmp_path: Path) -> None:
    report = run_job(
        Job(model=ZOO / model, targets=("cuda",), backend="tvm", sparsity=0.9, out=tmp_path / "o")
    )
    (entry,) = report["targets"]
    assert entry["verified"] is True and entry["latency_ms"]["median"] > 0
