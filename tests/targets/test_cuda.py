"""The cuda target. Without a GPU: the artifacts of the zoo models build (nvcc compiles the TVM
kernels), their bundles load, and the run ends with one error keeping them. With a GPU (skipped
here): the same models through the TVM backend, verified and measured on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compressor import DeviceError, Job, run_job
from compressor.errors import LoweringError
from targets import cuda
from targets.remote import LOCAL
from targets.runtime.run import cuda_binary_name, install_cuda_binaries, read_manifest
from targets.tvm import KernelChooser, gpu
from targets.tvm.gpu import GPU_DENSE, GPU_KERNELS, gpu_lanes, gpu_rule

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
MODELS = ("lenet300.pt", "lstm.pt", "lenet5.pt")
FATBIN_MAGIC = bytes.fromhex("50ed55ba")
NVCC = pytest.mark.skipif(
    shutil.which("nvcc") is None, reason="needs nvcc (the CUDA 13 toolkit); .ci/run insists"
)


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


@NVCC
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
    sparse = [k for k in kernels if k["format"] != GPU_DENSE]  # ours, by the cost model (no GPU)
    assert sparse and all(k["format"].startswith("csr-u4-") and not k["times_ms"] for k in sparse)
    assert all(k["sparsity"] >= 0.7 for k in sparse) and all(
        k in sparse for k in kernels if k["sparsity"] > 0.8
    )
    assert len(set(re.findall(r"csr_u4_\w+?_\d+_kernel", source))) == len(sparse)  # our kernel per weight
    assert (out / "cuda-tvm" / "model.so").stat().st_size > (out / "cuda-tvm" / "model.cu").stat().st_size / 4
    # nvcc compiled the kernels: a fatbin (SASS inside) named by the hash of the CUDA C, in the bundle
    (binary,) = (out / "cuda-tvm").glob("cuda-*.fatbin")
    assert binary.name == cuda_binary_name(source) and binary.name in read_manifest(out / "cuda-tvm")["files"]
    data = binary.read_bytes()
    assert data[:4] == FATBIN_MAGIC and b"\x7fELF" in data


@NVCC
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", MODELS)
def test_on_the_gpu_tvm_verifies_and_measures(model: str, tmp_path: Path) -> None:
    report = run_job(
        Job(model=ZOO / model, targets=("cuda",), backend="tvm", sparsity=0.9, out=tmp_path / "o")
    )
    (entry,) = report["targets"]
    assert entry["verified"] is True and entry["latency_ms"]["median"] > 0


def sparse_weight(shape: tuple[int, int], sparsity: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) >= sparsity)).astype(np.float32)


def test_cost_model_picks_csr_where_it_moves_fewer_bytes() -> None:
    """No GPU to time on: CSR from ~74% sparse (fewer bytes than dense at 40% of its bandwidth),
    batch-inner at batch > 1, dense beyond batch 16; lanes per row follow the row length."""
    for sparsity, batch, expected in (
        (0.6, 1, GPU_DENSE),
        (0.7, 1, GPU_DENSE),
        (0.8, 1, "csr"),
        (0.95, 1, "csr"),
    ):
        fmt = gpu_rule(sparse_weight((1024, 1024), sparsity), batch, 0.5, False)
        assert (fmt.name if fmt.sparse else GPU_DENSE).startswith(expected), (sparsity, fmt)
    w = sparse_weight((1024, 1024), 0.9)
    assert gpu_rule(w, 4, 0.5, False).batch_inner and not gpu_rule(w, 32, 0.5, False).sparse
    assert gpu_rule(sparse_weight((1024, 1024), 0.68), 1, 0.5, True).dtype == "float16"  # fewer bytes
    assert (
        gpu_lanes(sparse_weight((64, 2560), 0.9), 4) == 32
        and gpu_lanes(sparse_weight((64, 2560), 0.98), 4) == 8
    )
    assert gpu_lanes(sparse_weight((64, 128), 0.95), 4) == 4


def test_gpu_choice_times_every_candidate_built_for_cuda(tmp_path: Path) -> None:
    """Where a GPU is reachable the kernel is chosen by timing: every candidate (TVM's dense
    schedule, CSR with 4-32 lanes, BSR, batch-inner, fp16) compiles for CUDA into one library."""
    import tvm

    target = cuda.tvm_target(LOCAL)
    built: list[str] = []

    def timer(kernels: list, batch: int) -> list[float]:
        funcs = {f"k{i}": func.with_attr("global_symbol", f"k{i}") for i, (func, _) in enumerate(kernels)}
        lib = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(target))
        (module,) = [m for m in lib.mod.imports if m.kind == "cuda"]
        built.extend(re.findall(r"void __launch_bounds__\(\d+\) (k\d+)_kernel", module.inspect_source()))
        dense = [packed for _, packed in kernels if not packed.format.sparse]
        assert [a.shape for p in dense for a in p.arrays] == [w.shape[::-1]]  # W.T, as the model's matmul
        return [1e-3 if packed.format.name != "bsr4x1-u4-bt-t32-fp16" else 1e-4 for _, packed in kernels]

    blocks = np.repeat(np.random.default_rng(0).random((64, 96)) < 0.1, 4, axis=0)  # 4x1 blocks
    w = (blocks * np.random.default_rng(1).standard_normal(blocks.shape)).astype(np.float32)
    chooser = KernelChooser(target, GPU_KERNELS, fp16=True, cache=tmp_path / "c.json", timer=timer)
    choice = chooser.choose(w, 4)
    assert choice.format.name == "bsr4x1-u4-bt-t32-fp16"
    assert (
        GPU_DENSE in choice.times_ms and "csr-u4-t4" in choice.times_ms and "csr-u4-bt-t32" in choice.times_ms
    )
    assert len(set(built)) == len(choice.times_ms) == 21  # 5 sparse forms x batch-inner x fp16, dense


def test_cuda_benchmark_builds_its_kernels_and_checks_them_without_a_gpu() -> None:
    """benchmarks/spmv_cuda.py --build-only: every kernel it would time, built for CUDA, ours run
    serially on the CPU against numpy; without --build-only and a GPU, one error line."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "spmv_cuda.py"
    args = [sys.executable, str(script), "--shapes", "96x64", "--sparsities", "0.9", "--batches", "1", "4"]
    done = subprocess.run([*args, "--build-only"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "96x64 90% batch 1: 11 kernels built for CUDA, ours verified on the CPU",
        "96x64 90% batch 4: 21 kernels built for CUDA, ours verified on the CPU",
    ]
    if not has_gpu():
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1 and done.stderr.startswith("no CUDA GPU here") and not done.stdout


@NVCC
def test_the_loader_takes_the_compiled_binaries_instead_of_compiling(tmp_path: Path) -> None:
    """TVM compiles a CUDA module's C when it loads it, through ``tvm_callback_cuda_compile``:
    the bundle's hook answers with the fatbin nvcc made at build time, found by the C's hash."""
    import tvm
    import tvm_ffi

    from targets.tvm.kernels import Format, gpu_kernel, pack

    target = cuda.tvm_target(LOCAL)
    packed = pack(sparse_weight((64, 48), 0.9), Format("bsr", (1, 1), 4, threads=8))
    lib = tvm.compile(tvm.IRModule({"main": gpu_kernel(packed, 1)}), target=tvm.target.Target(target))
    (source,) = gpu.cuda_sources(lib.mod)
    (path,) = gpu.compile_binaries([source], tmp_path, target)
    assert path.read_bytes()[:4] == FATBIN_MAGIC
    install_cuda_binaries(tmp_path)
    assert bytes(tvm_ffi.get_global_func("tvm_callback_cuda_compile")(source)) == path.read_bytes()


@NVCC
@pytest.mark.skipif(has_gpu(), reason="a GPU is here")
def test_over_rpc_to_a_server_without_a_gpu(tmp_path: Path) -> None:
    """The bundle's server on this host (no GPU) behind --rpc: the run asks it for a GPU, finds
    none and keeps the bundles; CUDA binaries sent to it answer its compile hook."""
    from targets.bundle import RUNTIME
    from targets.emulator import free_port
    from targets.remote import connect, send_cuda_binaries
    from tests.targets.test_arm64 import process, wait_for_port

    port = free_port()
    with process(str(RUNTIME / "server.py"), "--host", "127.0.0.1", "--port", str(port)):
        wait_for_port(port)
        out = tmp_path / "out"
        job = Job(
            model=ZOO / "lenet300.pt", targets=("cuda",), sparsity=0.9, out=out, rpc=f"127.0.0.1:{port}"
        )
        with pytest.raises(DeviceError, match=r"no CUDA GPU on the device at 127\.0\.0\.1:\d+ .*is kept in"):
            run_job(job)
        assert "cuda/onnxruntime" in json.loads((out / "report.json").read_text())["error"]
    assert read_manifest(out / "cuda-tvm")["device"] == "cuda"
    (binary,) = (out / "cuda-tvm").glob("cuda-*.fatbin")
    port = free_port()  # a fresh server: the run's session may still hold the first one
    with process(str(RUNTIME / "server.py"), "--host", "127.0.0.1", "--port", str(port)):
        wait_for_port(port)
        device = connect(f"127.0.0.1:{port}")
        assert device.info["machine"] == "x86_64"
        send_cuda_binaries(device, out / "cuda-tvm")
        source = (out / "cuda-tvm" / "model.cu").read_text()
        remote_compile = device.session.get_function("tvm_callback_cuda_compile")
        assert bytes(remote_compile(source)) == binary.read_bytes()


def test_without_nvcc_the_build_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    with pytest.raises(LoweringError, match="nvcc not found: .*install the CUDA toolkit"):
        gpu.compile_binaries([""], tmp_path, cuda.tvm_target(LOCAL))


def test_the_hook_leaves_room_for_tvm_imported_after_it(tmp_path: Path) -> None:
    """A bundle without the runtime libraries loads through the ``tvm`` package, imported after
    the hook is installed: that import must not find its compile function taken."""
    code = (
        "import sys; from pathlib import Path; from targets.runtime.run import install_cuda_binaries; "
        f"install_cuda_binaries(Path({str(tmp_path)!r})); import tvm.support.nvcc; import tvm_ffi; "
        "print(tvm_ffi.get_global_func('tvm_callback_cuda_compile') is not None)"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_gpu_kit_kernels_verify_through_the_runtime_alone(tmp_path: Path) -> None:
    """benchmarks/gpu_kit.py's path on a GPU machine without TVM (weights made again from the
    plan's seeds, packed with numpy, the libraries loaded by tvm_ffi and the shipped runtime,
    each output checked against float64), dry-run on this CPU with the odd-shaped cases; a weight
    made from another seed is caught."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_kit.py"
    kit, out = tmp_path / "kit", tmp_path / "out"
    build = [sys.executable, str(script), "build", "--kit", str(kit), "--dry-run"]
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    run = [sys.executable, str(script), "run", "--kit", str(kit), "--out", str(out), "--limit", "300"]
    subprocess.run(run, check=True, capture_output=True, timeout=600)
    head, *cases = json.loads((out / "kernels.json").read_text())
    assert "dry run" in head["device"] and len(cases) == 8
    assert all(len(case["errors"]) >= 11 and max(case["errors"].values()) < 1e-5 for case in cases)
    assert "8 cases checked against float64" in (out / "kernels.md").read_text()
    plan = json.loads((kit / "plan.json").read_text())
    plan["cases"][2]["seed"] += 100  # another weight than the one its kernels were built for
    (kit / "plan.json").write_text(json.dumps(plan))
    subprocess.run(run, check=True, capture_output=True, timeout=600)
    failed = [c for c in json.loads((out / "kernels.json").read_text())[1:] if "error" in c]
    assert [c["name"] for c in failed] == [plan["cases"][2]["name"]]
    assert re.search(r"packs to other sizes|is wrong", failed[0]["error"])
