"""Elementwise math that vectorises: ``erf``, ``tanh``, ``exp`` and through them GELU and sigmoid,
as TVM's polynomial approximations (``topi.fast_*``, within 4e-7 relative of the exact
functions in fp32), and softmax and layer norm over the last axis through our row-wise kernels
(``rows_cpu``, softmax with the same exponential). LLVM calls libm's ``erff``/``tanhf``/``expf``
one lane at a time, which made GELU the slowest op of a transformer after its matmuls."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

SQRT1_2 = 0.7071067811865476


def _gelu(x: Any) -> Any:
    from tvm import topi

    return topi.multiply(x, topi.add(0.5, topi.multiply(0.5, topi.fast_erf(topi.multiply(x, SQRT1_2)))))


def _sigmoid(x: Any) -> Any:
    from tvm import topi

    return topi.divide(1.0, topi.add(1.0, topi.fast_exp(topi.negative(x))))


def _tanh_gelu(x: Any) -> Any:  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    from tvm import topi

    cube = topi.multiply(x, topi.multiply(x, x))
    inner = topi.multiply(topi.add(x, topi.multiply(0.044715, cube)), 0.7978845608028654)
    return topi.multiply(topi.multiply(x, 0.5), topi.add(1.0, topi.fast_tanh(inner)))


def fast_math_pass(lanes: int) -> Any:
    """The Relax pass replacing those ops in every function of the module (fp32 only); the
    row-wise kernels (softmax, layer norm) use vectors of ``lanes`` floats."""
    import tvm
    from tvm import relax, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from targets.tvm.export import static_shape
    from targets.tvm.kernels.rows_cpu import layer_norm_kernel, softmax_kernel
    from targets.tvm.rewrite import add_kernel

    def softmax(x: Any, axis: int) -> Any:
        return topi.nn.fast_softmax(x, axis)

    unary = {
        "relax.nn.gelu": _gelu,
        "relax.nn.gelu_tanh": _tanh_gelu,
        "relax.sigmoid": _sigmoid,
        "relax.erf": topi.fast_erf,
        "relax.tanh": topi.fast_tanh,
        "relax.exp": topi.fast_exp,
    }

    kernels: dict[tuple, Any] = {}

    @mutator
    class FastMath(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = getattr(call.op, "name", None)
            rowwise = ("relax.nn.softmax", "relax.nn.layer_norm")
            if name not in (*unary, *rowwise) or call.ty.dtype != "float32":
                return call
            if name == "relax.nn.softmax":
                return self.softmax(call)
            if name == "relax.nn.layer_norm":
                return self.layer_norm(call)
            return self.builder_.call_te(unary[name], call.args[0])

        def rows(self, key: tuple, make: Any, args: list[Any], shape: list[int]) -> Any:
            """A call of the row-wise kernel ``make()`` for ``key`` (its kind, rows, n, ...) on
            ``args`` (the first viewed as rows x n), returning ``shape``."""
            if key not in kernels:
                symbol = f"{key[0]}_rows_{len(kernels)}"
                kernels[key] = add_kernel(self.builder_, make(), symbol)
            matrix = key[1:3]
            args = [relax.op.reshape(args[0], matrix), *args[1:]]
            out = relax.call_tir(kernels[key], args, out_ty=relax.TensorType(matrix, "float32"))
            return relax.op.reshape(out, shape)

        def softmax(self, call: Any) -> Any:
            x, axis = call.args[0], int(call.attrs.axis)
            shape = static_shape(x)
            if not shape or axis not in (-1, len(shape) - 1):
                return self.builder_.call_te(softmax, x, axis)
            rows, n = int(np.prod(shape[:-1])), shape[-1]
            return self.rows(("softmax", rows, n), partial(softmax_kernel, rows, n, lanes), [x], shape)

        def layer_norm(self, call: Any) -> Any:
            """Over the last axis, with its scale and shift: our kernel; else TVM's."""
            x, gamma, beta = call.args
            attrs, shape = call.attrs, static_shape(x)
            axes = [int(a) for a in attrs.axes]
            if (
                not shape
                or axes not in ([-1], [len(shape) - 1])
                or not (attrs.center and attrs.scale)
                or any(static_shape(p) != shape[-1:] or p.ty.dtype != "float32" for p in (gamma, beta))
            ):
                return call
            rows, n, eps = int(np.prod(shape[:-1])), shape[-1], float(attrs.epsilon)
            make = partial(layer_norm_kernel, rows, n, lanes, eps)
            return self.rows(("layer_norm", rows, n, eps), make, [x, gamma, beta], shape)

    @tvm.transform.module_pass(opt_level=0, name="FastMath")
    def fast_math(mod: Any, _ctx: Any) -> Any:
        rewriter = FastMath(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return fast_math
