"""The ONNX Runtime backend: ``torch.onnx.export(dynamo=True)`` -> ONNX -> an ORT session.

ONNX Runtime densifies sparse weights, so zeros alone do not make it faster; its speedups come
from dead-neuron removal and structured pruning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from compressor.errors import BackendUnavailable, ConfigError, LoweringError
from compressor.registry import BACKENDS
from compressor.state import State, set_eval
from targets.base import LocalRunner, Runner, Target, Unavailable
from targets.remote import LOCAL, Device, RemoteOrtRunner

PROVIDERS = {"cpu": "CPUExecutionProvider", "arm64": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def export_onnx(state: State, path: Path) -> None:
    """Write ``state.module`` as an ONNX model (dynamo exporter, optimised) with its weights in
    ``model.onnx.data`` beside it (``runtime.run.onnx_data``): streamed from the model's own tensors, where a
    single file would be serialised in memory (twice the weights at once) and cannot pass 2 GB."""
    set_eval(state.module)
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                state.module, state.example_inputs, dynamo=True, verbose=False, external_data=False
            )
            program.save(str(path), external_data=True)
    except Exception as e:
        raise LoweringError(
            f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "the model must be exportable by torch.onnx.export(dynamo=True)"
        ) from None


def convert_to_ort(model: Path) -> Path:
    """Write ``model.ort`` (ORT Mobile's format) beside ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime.tools.convert_onnx_models_to_ort",
                str(model),
                "--output_dir",
                tmp,
                "--optimization_style",
                "Fixed",
            ],
            capture_output=True,
            text=True,
        )
        made = Path(tmp) / model.with_suffix(".ort").name
        if done.returncode != 0 or not made.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise LoweringError(f"converting {model.name} to the ORT format failed ({lines[-1]})")
        return Path(shutil.copy(made, model.with_suffix(".ort")))


class OrtRunner(LocalRunner):
    """An ONNX Runtime session on this host with a fixed thread count (the one ``run.py`` makes),
    with the execution provider of ``device_type``."""

    def __init__(self, path: Path, threads: int, device_type: str = "cpu") -> None:
        super().__init__("onnxruntime", path, device_type, threads)


@BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1

    def build(
        self, state: State, target: Target, out_dir: Path, device: Device = LOCAL
    ) -> tuple[Path, Runner]:
        if target.name not in PROVIDERS:
            raise ConfigError(f"backend onnxruntime has no execution provider for target {target.name!r}")
        provider = PROVIDERS[target.name]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        export_onnx(state, path)
        if target.remote:  # a phone or board: the ORT Mobile form goes with it
            path = convert_to_ort(path)
        if device.session is None:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                raise LoweringError("onnxruntime is not installed; pip install onnxruntime") from None
        if target.device_type == "cuda":
            from targets.cuda import gpu, no_gpu

            if gpu(device) is None:
                return path, Unavailable(no_gpu(device, "onnxruntime"))
            problem = provider_problem(device, provider)
            if problem:
                return path, Unavailable(problem, error=BackendUnavailable)
        if device.session is not None:
            return path, RemoteOrtRunner(device, path, provider)
        return path, OrtRunner(path, self.threads, target.device_type)


def provider_problem(device: Device, provider: str) -> str | None:
    """Why ONNX Runtime on ``device`` (here or over RPC) cannot run the model: it has no
    ``provider`` (the bundle's server says which it has); else None."""
    if device.session is None:
        import onnxruntime

        providers, where = onnxruntime.get_available_providers(), "here"
        fix = "pip uninstall -y onnxruntime && pip install -e '.[cuda]'"
    else:
        providers, where = device.info.get("ort_providers", [provider]), f"on {device.name}"
        fix = "pip install onnxruntime-gpu there in place of onnxruntime and start the server again"
    if provider not in providers:
        return f"ONNX Runtime {where} has no {provider}: {fix}; the cuda/onnxruntime bundle is kept"
    return None
