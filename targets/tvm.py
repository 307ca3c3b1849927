"""The TVM backend: ``torch.export`` -> Relax (``from_exported_program``) -> LLVM -> ``model.so``.

This is the dense path; the sparse TIR kernels and tuning plug in here. The Relax torch
frontend miscomputes negative indices (``x[:, -1]`` becomes an out-of-bounds ``take``), so
they are made positive in the exported graph first; every artifact is verified anyway.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import LoweringError
from compressor.registry import BACKENDS
from compressor.state import State, set_eval
from targets.base import Target


def host_target() -> dict[str, Any]:
    """The LLVM target of this host: TVM wants the triple and CPU name spelled out."""
    import tvm

    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}


TARGETS = {"cpu": host_target}


def positive_indices(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Rewrite ``select(x, dim, -k)`` to ``select(x, dim, size - k)`` (and negative dims), in place."""
    for node in program.graph.nodes:
        if node.target is torch.ops.aten.select.int:
            x, dim, index = node.args
            shape = x.meta["val"].shape
            dim = dim % len(shape)
            node.update_arg(1, dim)
            if index < 0:
                node.update_arg(2, index + int(shape[dim]))
    program.graph_module.recompile()
    return program


def export_relax(state: State, fix_indices: bool = True) -> Any:
    from tvm.relax.frontend.torch import from_exported_program

    set_eval(state.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(state.module, state.example_inputs)
        if fix_indices:
            positive_indices(program)
        return from_exported_program(program, keep_params_as_input=False)


class TvmRunner:
    """A Relax VM over a compiled library."""

    def __init__(self, library: Path) -> None:
        import tvm
        from tvm import relax

        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), self.device)
        self.threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
        self._tensor = tvm.runtime.tensor

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.vm["main"](*(self._tensor(x, self.device) for x in inputs))
        return _flatten(out)


def _flatten(value: Any) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [a for v in value for a in _flatten(v)]


@BACKENDS.register("tvm")
class TvmBackend:
    name = "tvm"

    def __init__(self, fix_indices: bool = True) -> None:
        self.fix_indices = fix_indices

    def build(self, state: State, target: Target, out_dir: Path) -> tuple[Path, TvmRunner]:
        try:
            import tvm
        except ImportError:
            raise LoweringError("apache-tvm is not installed; pip install apache-tvm==0.27.0.post1") from None
        if target.name not in TARGETS:
            raise LoweringError(f"backend tvm cannot build for target {target.name!r} yet")
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            module = export_relax(state, self.fix_indices)
            executable = tvm.compile(module, target=tvm.target.Target(TARGETS[target.name]()))
            path = out_dir / "model.so"
            executable.export_library(str(path))
        except Exception as e:
            raise LoweringError(
                f"TVM lowering failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        return path, TvmRunner(path)
