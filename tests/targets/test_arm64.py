"""The arm64 target: bundles and their runner, device faults, and (marked ``emulator``) real runs
on the emulated arm64 device, directly, through a tracker, and losing it mid-measurement."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import targets
from compressor import DeviceError, Job, run_job
from compressor.job import QuietUI
from targets import arm64
from targets.bundle import write_bundle
from targets.emulator import VENV, Emulator, free_port, provision
from targets.runtime import run as runner

LSTM = Path(__file__).resolve().parents[2] / "models" / "zoo" / "lstm.pt"


def wait_for_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@contextlib.contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def tracker(port: int) -> Iterator[None]:
    with process(
        "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)
    ):
        wait_for_port(port)
        yield


# --- without a device ------------------------------------------------------------------------


def test_tvm_target_and_cross_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    assert arm64.tvm_target() == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path))
    assert arm64.tvm_target()["mtriple"] == "aarch64-linux-android"
    with pytest.raises(Exception, match="has no aarch64-linux-android clang"):
        arm64.compiler()


def test_lowering_for_a_device_needs_one(lenet_state, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="runs on a device: give --rpc"):
        targets.lower(lenet_state, "arm64", "tvm", tmp_path)


def test_bundle_runner_verifies_and_times_and_catches_tampering(lenet_state, tmp_path: Path) -> None:
    """The runner that goes to the device, run here on a bundle of a cpu/onnxruntime build."""
    compiled = targets.lower(lenet_state, "cpu", "onnxruntime", tmp_path / "b")
    manifest = write_bundle(compiled)
    folder = compiled.artifact.parent
    assert {"model.onnx", "inputs.npz", "expected.npz", "run.py", "server.py"} <= set(manifest["files"])
    assert manifest["inputs"] == [{"shape": [1, 64], "dtype": "float32"}] and manifest["trials"] == 4
    result = runner.run_bundle(folder, dense=folder, min_seconds=0.05)
    assert result["verified"] and result["max_abs_error"] < 1e-5
    assert result["latency_ms"]["median"] > 0 and result["dense_latency_ms"]["samples"] >= 30
    # As a script, from a copy of the folder: it needs only numpy and the runtime.
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    done = subprocess.run(
        [sys.executable, str(copy / "run.py"), "--min-seconds", "0.05", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verified"] is True
    # Wrong expected outputs: not verified, no latency, exit 1.
    expected = dict(np.load(copy / "expected.npz"))
    expected["t2_0"] = expected["t2_0"] + 1e-2
    np.savez(copy / "expected.npz", **expected)
    manifest["files"]["expected.npz"] = runner.sha256(copy / "expected.npz")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bad = runner.run_bundle(copy)
    assert not bad["verified"] and "differs from the torch model" in bad["error"] and "latency_ms" not in bad
    # A file that changed after the build: refused by its hash.
    (copy / "model.onnx").write_bytes(b"x" + (copy / "model.onnx").read_bytes())
    with pytest.raises(SystemExit, match="does not match manifest.json"):
        runner.run_bundle(copy)


def test_tvm_bundle_runs_with_only_the_tvm_runtime(lenet_state, tmp_path: Path) -> None:
    """A cpu/tvm bundle carries libtvm_runtime.so; run.py then needs tvm_ffi, not the compiler.
    With ``--dense`` a second bundle carries a second copy, which must not be loaded again."""
    compiled = targets.lower(lenet_state, "cpu", "tvm", tmp_path / "b")
    manifest = write_bundle(compiled)
    assert "lib/libtvm_runtime.so" in manifest["files"] and "apache-tvm-ffi" in manifest["runtime"]
    dense = shutil.copytree(compiled.artifact.parent, tmp_path / "dense")
    script = (
        f"import sys, json, run; r = run.run_bundle(run.Path('.'), run.Path({str(dense)!r}), "
        "min_seconds=0.05); "
        "print(json.dumps({'verified': r['verified'], 'tvm': 'tvm' in sys.modules, 'dense': 'speedup' in r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=compiled.artifact.parent,
        env={**os.environ, "PYTHONPATH": str(compiled.artifact.parent)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"verified": True, "tvm": False, "dense": True}


def job(tmp_path: Path, **options: object) -> Job:
    return Job(model=LSTM, targets=("arm64",), sparsity=0.9, out=tmp_path / "out", **options)  # type: ignore[arg-type]


def test_unreachable_device_keeps_the_compressed_model(tmp_path: Path) -> None:
    with pytest.raises(
        DeviceError, match=r"cannot reach the TVM RPC server at 127\.0\.0\.1:\d+ .*what was built"
    ):
        run_job(job(tmp_path, rpc=f"127.0.0.1:{free_port()}"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "cannot reach" in report["error"] and report["targets"] == []
    assert (tmp_path / "out" / "model.pt2").is_file()


def cross_compiler() -> str | None:
    """Why arm64 libraries cannot be linked here, or None."""
    if shutil.which(arm64.GCC) or os.environ.get("ANDROID_NDK_HOME"):
        return None
    return f"needs {arm64.GCC} (apt-get install g++-aarch64-linux-gnu) to link arm64 libraries"


@pytest.mark.skipif(bool(cross_compiler()), reason=str(cross_compiler()))
def test_device_of_the_wrong_architecture(tmp_path: Path) -> None:
    """An x86-64 RPC server (this host's) behind --rpc: the aarch64 library cannot load there."""
    port = free_port()
    with process(
        "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)
    ):
        wait_for_port(port)
        with pytest.raises(DeviceError, match="cannot load a library built for aarch64"):
            run_job(job(tmp_path, rpc=f"127.0.0.1:{port}", backend="tvm"))
    assert (tmp_path / "out" / "model.pt2").is_file()
    assert "cannot load" in json.loads((tmp_path / "out" / "report.json").read_text())["error"]


def test_tracker_without_the_key(tmp_path: Path) -> None:
    port = free_port()
    with tracker(port), pytest.raises(DeviceError, match="has no device with key 'pixel9' .*none"):
        run_job(job(tmp_path, tracker=f"127.0.0.1:{port}", key="pixel9"))


# --- on the emulated arm64 device -------------------------------------------------------------


def can_emulate() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    missing = [
        t for t in ("qemu-aarch64-static", "debootstrap", "aarch64-linux-gnu-g++") if not shutil.which(t)
    ]
    return f"needs {', '.join(missing)}" if missing else None


emulator = pytest.mark.skipif(bool(can_emulate()), reason=f"arm64 emulator: {can_emulate()}")


@pytest.fixture(scope="module")
def root() -> Path:
    """The arm64 root, provisioned once (minutes) and re-used from the cache afterwards."""
    return provision()


def check_entries(report: dict, backends: set[str]) -> None:
    assert {e["backend"] for e in report["targets"]} == backends
    for entry in report["targets"]:
        assert entry["verified"] is True and entry["emulated"] is True
        assert entry["max_abs_error"] < 1e-4
        assert entry["latency_ms"]["median"] > 0 and entry["dense_latency_ms"]["median"] > 0


@emulator
def test_emulate_builds_verifies_and_measures_both_backends(root: Path, tmp_path: Path) -> None:
    report = run_job(job(tmp_path, emulate=True))
    check_entries(report, {"tvm", "onnxruntime"})
    out = tmp_path / "out"
    tvm_entry = next(e for e in report["targets"] if e["backend"] == "tvm")
    assert "emulated arm64 device" in tvm_entry["device"]
    assert {k["name"] for k in tvm_entry["kernels"]} == {
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "fc.weight",
    }
    for folder, artifact in (("arm64-tvm", "model.so"), ("arm64-onnxruntime", "model.ort")):
        manifest = json.loads((out / folder / "manifest.json").read_text())
        assert manifest["artifact"] == artifact and manifest["machine"] == "aarch64"
    assert (out / "arm64-tvm" / "model.so").read_bytes()[18] == 0xB7  # ELF e_machine: AArch64
    # The bundle's own runner, on the arm64 Python, verifies the TVM library there too.
    inside = root / "tmp" / f"bundle-{os.getpid()}"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(out / "arm64-tvm", inside)
    try:
        done = subprocess.run(
            ["chroot", str(root), f"{VENV}/bin/python", f"/tmp/{inside.name}/run.py", "--min-seconds", "0.1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["machine"] == "aarch64" and result["verified"] is True


@pytest.mark.slow  # 2.5 minutes: two emulated devices
@emulator
def test_through_a_tracker_with_two_emulated_devices(root: Path, tmp_path: Path) -> None:
    from tvm import rpc

    port = free_port()
    with tracker(port), Emulator(root) as emu:
        for _ in range(2):
            emu.start(tracker=f"127.0.0.1:{port}", key="arm64-emu")
        deadline = time.monotonic() + 30
        while (servers := len(rpc.connect_tracker("127.0.0.1", port).summary()["server_info"])) < 2:
            assert time.monotonic() < deadline, f"{servers} devices registered"
            time.sleep(0.5)
        report = run_job(job(tmp_path, tracker=f"127.0.0.1:{port}", key="arm64-emu"))
    check_entries(report, {"tvm", "onnxruntime"})
    assert all("tracker" in e["device"] for e in report["targets"])


class KillAt(QuietUI):
    """Stops the emulator when a step whose text contains ``when`` begins."""

    def __init__(self, emulator: Emulator, when: str) -> None:
        self.emulator, self.when = emulator, when

    @contextlib.contextmanager
    def step(self, text: str, live: bool = True) -> Iterator[None]:
        if self.when in text:
            self.emulator.stop()
        yield


@pytest.mark.slow  # 1 minute: qemu
@emulator
def test_device_lost_mid_measurement(root: Path, tmp_path: Path) -> None:
    with Emulator(root) as emu:
        port = emu.start()
        with pytest.raises(
            DeviceError, match=r"measuring on the device at 127\.0\.0\.1.* failed .*what was built"
        ):
            run_job(job(tmp_path, rpc=f"127.0.0.1:{port}", backend="tvm"), KillAt(emu, "timing"))
    out = tmp_path / "out"
    assert (out / "arm64-tvm" / "model.so").is_file() and (out / "arm64-tvm" / "manifest.json").is_file()
    assert "measuring" in json.loads((out / "report.json").read_text())["error"]


@pytest.mark.slow  # 2.5 minutes: qemu
@emulator
@pytest.mark.parametrize("name", ["bert", "resnet-18", "mobilenet-v2"])
def test_a_transformer_and_a_cnn_verify_on_the_emulated_device(root: Path, tmp_path: Path, name: str) -> None:
    """Their attention GEMMs, convolutions and sparse matmuls, built for NEON (4 lanes) and
    checked against torch on the arm64 device; MobileNetV2's expansions at least a vector wide
    store their outputs split into the phases of the stride-2 depthwise convolutions reading
    them (NEON's uzp1/uzp2 de-interleave the columns)."""
    pytest.importorskip("transformers", reason="the real architectures need transformers")
    from compressor import PassContext, State
    from models import real
    from passes import MagnitudePrune
    from targets.arm64 import ARM64
    from targets.base import Compiled
    from targets.emulator import emulated_device
    from targets.tvm import TvmBackend

    small = {
        "bert": lambda: real.bert(layers=2, hidden=64, heads=2, intermediate=128, seq=16, vocab=500),
        "resnet-18": lambda: real.resnet18(image=32, classes=10),
        "mobilenet-v2": lambda: real.mobilenet_v2(image=32, classes=10),
    }
    module, inputs = small[name]()
    state = State(module=module, example_inputs=inputs)
    state = MagnitudePrune(sparsity=0.9).apply(state, PassContext()).state
    with emulated_device() as device:  # kernels by rule: timing candidates under qemu takes long
        artifact, runner = TvmBackend(measure=False).build(state, ARM64, tmp_path, device)
        compiled = Compiled(
            target=ARM64, backend="tvm", artifact=artifact, runner=runner, state=state, device=device
        )
        assert compiled.verify().max_abs_error < 1e-4
    formats = {k["format"].split("-")[0] for k in runner.layers}
    expected = {
        "bert": {"csr"},
        "resnet-18": {"conv3x3", "conv7x7", "conv1x1"},
        "mobilenet-v2": {"conv3x3", "conv1x1"},
    }[name]
    assert expected <= formats, formats
