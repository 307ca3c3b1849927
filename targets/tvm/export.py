"""``torch.export`` -> Relax, and the names of the weights the rewrite sees as constants.

Two fixes to the exported graph first, for what the Relax torch frontend gets wrong: negative
indices (``x[:, -1]`` becomes an out-of-bounds ``take``) are made positive, and the empty 1-D
tensors a key/value cache starts from (GPT-2: ``cat([tensor([]), keys], -2)``, which torch
allows and Relax rejects) are dropped from ``cat``. Every artifact is verified.
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


def drop_empty_concat_inputs(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Remove the empty 1-D operands of each ``cat`` (torch skips them), in place; a ``cat`` left
    with one operand becomes that operand."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.cat.default:
            continue
        tensors = node.args[0]
        kept = [t for t in tensors if not (t.meta["val"].dim() == 1 and t.meta["val"].numel() == 0)]
        if len(kept) == len(tensors) or not kept:
            continue
        if len(kept) == 1 and kept[0].meta["val"].shape == node.meta["val"].shape:
            node.replace_all_uses_with(kept[0])
        else:
            node.update_arg(0, kept)
    graph.eliminate_dead_code()
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
        drop_empty_concat_inputs(program)
        return from_exported_program(program, keep_params_as_input=False)


def static_shape(expr: Any) -> list[int] | None:
    """The shape of a Relax tensor expression as integers, or None when it is symbolic or not
    known (the rewrites then leave the expression to TVM)."""
    try:
        return [int(d) for d in expr.ty.shape]
    except (TypeError, AttributeError, ValueError):
        return None


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
