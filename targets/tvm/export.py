"""``torch.export`` -> Relax, and the names of the weights the rewrite sees as constants.

The Relax torch frontend miscomputes negative indices (``x[:, -1]`` becomes an out-of-bounds
``take``), so they are made positive in the exported graph first; every artifact is verified.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import torch

from compressor.state import State, set_eval


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


def weight_digest(weight: np.ndarray) -> bytes:
    """A weight's SHA-256 with its shape and dtype, read in place (no copy: a large model's
    weights are hundreds of MB)."""
    h = hashlib.sha256(f"{weight.dtype}{weight.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(weight)).cast("B"))
    return h.digest()


def parameter_names(state: State) -> dict[bytes, str]:
    """Parameter names by ``weight_digest``: the rewrite sees constants, the report wants names."""
    return {
        weight_digest(p.detach().cpu().numpy()): name
        for name, p in state.module.named_parameters()
        if p.dim() in (2, 4) and p.dtype == torch.float32  # linear and convolution weights
    }
