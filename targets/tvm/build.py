"""The TVM backend: export, rewrite with the chosen kernels, schedule, build ``model.so`` and its
weights (``params.npz``), and load it where it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from compressor.errors import DeviceError, LoweringError
from compressor.registry import BACKENDS
from compressor.state import State
from targets.base import LocalRunner, Runner, Target, Unavailable
from targets.remote import LOCAL, Device, RemoteTvmRunner
from targets.tvm.choose import KernelChooser
from targets.tvm.conv_graph import fold_batch_norms
from targets.tvm.devices import DEVICES, TvmDevice, set_threads, vector_lanes, wide_lanes
from targets.tvm.export import export_relax, parameter_names
from targets.tvm.library import pack_imports
from targets.tvm.params import LiftConstants
from targets.tvm.rewrite import Layer, count_calls, rewrite_gemms, rewrite_matmuls
from targets.tvm.rewrite_conv import rewrite_convs
from targets.tvm.rewrite_recurrent import rewrite_recurrent
from targets.tvm.schedule import relax_pipeline
from targets.tvm.tune import tune_cache, tune_pass


@BACKENDS.register("tvm")
class TvmBackend:
    """Options: ``kernels=False`` keeps TVM's own (untuned) matmuls; ``fp16`` also tries sparse
    formats with fp16 values (outputs then differ from torch by ~1e-3 relative); ``measure=False``
    picks kernels by rule instead of timing them; ``tune``: MetaSchedule trials for the functions
    the kernels leave to TVM (``tune.py``; on this host, so the cpu target only)."""

    name = "tvm"

    def __init__(
        self,
        fix_indices: bool = True,
        kernels: bool = True,
        threshold: float = 0.5,
        fp16: bool = False,
        measure: bool = True,
        cache: Path | None = None,
        tune: int = 0,
    ) -> None:
        self.fix_indices = fix_indices
        self.kernels = kernels
        self.threshold = threshold
        self.fp16 = fp16
        self.measure = measure
        self.cache = cache
        self.tune = tune
        self.layers: list[Layer] = []
        self.gemms = 0  # matmuls of two activations (attention's) through our GEMM

    def build(
        self, state: State, target: Target, out_dir: Path, device: Device = LOCAL
    ) -> tuple[Path, Runner]:
        try:
            import tvm
        except ImportError:
            raise LoweringError("apache-tvm is not installed; pip install apache-tvm==0.27.0.post1") from None
        if target.name not in DEVICES:
            raise LoweringError(f"backend tvm cannot build for target {target.name!r} yet")
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = DEVICES[target.name]
        tvm_target = spec.target(device)
        compiler = spec.compiler() if spec.compiler else None
        try:
            module = export_relax(state, self.fix_indices)
            if self.kernels:
                chooser = KernelChooser(
                    tvm_target,
                    spec.kernels,
                    self.threshold,
                    self.fp16,
                    self.measure and spec.unavailable(device) is None,  # else the policy's rule
                    self.cache,
                    device=device,
                    compiler=compiler,
                )
                names = parameter_names(state)
                cells: list[Layer] = []
                if spec.kernels.recurrent:  # before the matmuls: it takes the steps' own
                    module, cells = rewrite_recurrent(module, chooser, wide_lanes(tvm_target), names)
                module, self.layers = rewrite_matmuls(
                    module, chooser.choose, chooser.build, names, chooser.label
                )
                self.layers = cells + self.layers
                if (gemm := spec.kernels.gemm(tvm_target)) is not None:
                    module, self.gemms = rewrite_gemms(module, gemm)
                if spec.kernels.direct_conv:
                    module = fold_batch_norms(module, names)
                    module, convs = rewrite_convs(module, vector_lanes(tvm_target), names, chooser)
                    self.layers += convs
            target_obj = tvm.target.Target(tvm_target)
            lift = LiftConstants()
            schedule = self.kernels and spec.kernels.schedule
            if self.tune and device.session is not None:
                raise LoweringError("tuning measures candidates on this host: --tune is for --target cpu")
            tuning = tune_pass(target_obj, self.tune, tune_cache(tvm_target)) if self.tune else None
            pipeline = relax_pipeline(target_obj, vector_lanes(tvm_target), schedule, lift, tuning)
            executable = tvm.compile(module, target=target_obj, relax_pipeline=pipeline)
            del module  # the weights live on in ``lift`` until they are on disk
            lift.save(out_dir)
            count_calls(executable, self.layers)
            path = out_dir / "model.so"
            executable.export_library(str(path), fcompile=compiler, fpack_imports=pack_imports)
            spec.kernels.finish(executable.mod, out_dir, tvm_target)
        except (LoweringError, DeviceError):
            raise
        except Exception as e:
            raise LoweringError(
                f"TVM lowering failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        runner = load_runner(path, target, device, spec)
        if self.layers:
            runner.layers = [layer.to_json() for layer in self.layers]  # type: ignore[attr-defined]
        return path, runner


def tvm_runtime_libs() -> str:
    """The folder of the TVM runtime libraries (``libtvm_runtime.so``) of the installed package:
    what the worker processes load, with ``tvm_ffi``, instead of the compiler."""
    return str(Path(str(importlib.util.find_spec("tvm").origin)).parent / "lib")  # type: ignore[union-attr]


def load_runner(path: Path, target: Target, device: Device, spec: TvmDevice | None = None) -> Runner:
    """Load ``path`` where it runs: here, on the RPC device, or (no GPU) nowhere."""
    spec = spec or DEVICES[target.name]
    if (reason := spec.unavailable(device)) is not None:
        return Unavailable(reason)
    if device.session is None:
        spec.kernels.install(path.parent)
        return LocalRunner("tvm", path, target.device_type, set_threads(), tvm_runtime_libs())
    return RemoteTvmRunner(device, path, target.machine, target.device_type)
