"""The model's weights out of ``model.so``: the constants of ``main`` become parameters, saved to
``params.npz`` beside the library.

A library that holds its weights is in memory twice wherever it runs (the mapped ``.rodata`` and
the VM's deserialised copy) and three times while it is written. With the weights in a file of
their own, the build streams them to disk once, the runners read them one at a time into the
tensors the VM takes, and the library is the code alone. The pass runs after ``FoldConstant``,
so what TVM computes from the weights at compile time (a transpose, a packed layout) is still
computed once there; ``main`` then takes ``(*inputs, *params)`` in the order of ``params.npz``.
Constants of equal content are one parameter: folding gives each use of a weight its own copy
(a recurrent layer unrolled over 64 steps, each step transposing ``W_hh``, held it 64 times).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from targets.runtime.run import PARAMS

LIFT_BYTES = 4096  # smaller constants (scalars, shapes, short vectors) stay in the code


def content_key(data: Any) -> tuple[Any, ...]:
    """What makes two constants the same parameter: shape, dtype and a digest of the bytes."""
    array = np.from_dlpack(data)  # a view of TVM's tensor: no copy
    digest = hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).data, digest_size=16).digest()
    return (array.shape, str(array.dtype), digest)


class LiftConstants:
    """A module pass that turns each constant of ``main`` of at least ``min_bytes`` into a
    parameter, keeping the values (``values``) to be written by ``save``."""

    def __init__(self, min_bytes: int = LIFT_BYTES) -> None:
        self.min_bytes = min_bytes
        self.values: list[Any] = []  # the constants' tensors, in parameter order

    def pass_(self) -> Any:
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="LiftConstants")
        def lift(mod: Any, _ctx: Any) -> Any:
            return self.lift(mod)

        return lift

    def lift(self, mod: Any) -> Any:
        from tvm import relax

        lifted: dict[Any, Any] = {}  # constant -> its parameter; a constant used twice is one
        by_content: dict[tuple[Any, ...], Any] = {}  # (shape, dtype, digest) -> the parameter
        values: list[Any] = []
        min_bytes = self.min_bytes

        @relax.expr_functor.mutator
        class Mutator(relax.PyExprMutator):
            def visit_generic_const_(self, const: Any) -> Any:
                data = const.value
                size = int(np.prod([int(d) for d in data.shape])) * np.dtype(str(data.dtype)).itemsize
                if size < min_bytes:
                    return const
                if const not in lifted:
                    key = content_key(data)
                    if key not in by_content:
                        by_content[key] = relax.Var(f"param{len(by_content)}", const.ty)
                        values.append(data)
                    lifted[const] = by_content[key]
                return lifted[const]

        func = mod["main"]
        body = Mutator(mod).visit_expr(func.body)
        self.values = list(values)
        params = [*func.params, *by_content.values()]
        # TVM keeps the classes it derives objects from, and this one's method holds ``lifted``:
        # left full, every weight would stay in memory for the rest of the job.
        lifted.clear()
        by_content.clear()
        values.clear()
        new = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        mod = mod.clone()  # a pass leaves its input as it was
        mod.update_func(mod.get_global_var("main"), new.with_attr("num_input", len(func.params)))
        return mod

    def save(self, folder: Path) -> Path:
        """Write the lifted values to ``folder / params.npz`` (views of TVM's tensors: no copy) and
        let them go."""
        path = folder / PARAMS
        np.savez(path, *(np.from_dlpack(v) for v in self.values))
        self.values = []
        return path
