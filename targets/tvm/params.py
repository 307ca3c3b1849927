"""The model's weights out of ``model.so``: the constants of ``main`` become parameters, saved to
``params.npz`` beside the library.

A library that holds its weights is in memory twice wherever it runs (the mapped ``.rodata`` and
the VM's deserialised copy) and three times while it is written. With the weights in a file of
their own, the build streams them to disk once, the runners read them one at a time into the
tensors the VM takes, and the library is the code alone. The pass runs after ``FoldConstant``,
so what TVM computes from the weights at compile time (a transpose, a packed layout) is still
computed once there; ``main`` then takes ``(*inputs, *params)`` in the order of ``params.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from targets.runtime.run import PARAMS

LIFT_BYTES = 4096  # smaller constants (scalars, shapes, short vectors) stay in the code


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
        min_bytes = self.min_bytes

        @relax.expr_functor.mutator
        class Mutator(relax.PyExprMutator):
            def visit_generic_const_(self, const: Any) -> Any:
                data = const.value
                size = int(np.prod([int(d) for d in data.shape])) * np.dtype(str(data.dtype)).itemsize
                if size < min_bytes:
                    return const
                if const not in lifted:
                    lifted[const] = relax.Var(f"param{len(lifted)}", const.ty)
                return lifted[const]

        func = mod["main"]
        body = Mutator(mod).visit_expr(func.body)
        self.values = [const.value for const in lifted]
        params = [*func.params, *lifted.values()]
        # TVM keeps the classes it derives objects from, and this one's method holds ``lifted``:
        # left full, every weight would stay in memory for the rest of the job.
        lifted.clear()
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
