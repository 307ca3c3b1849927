"""Elementwise math that vectorises: ``erf``, ``tanh``, ``exp`` and through them GELU, sigmoid and
softmax, as TVM's polynomial approximations (``topi.fast_*``, within 4e-7 relative of the exact
functions in fp32). LLVM calls libm's ``erff``/``tanhf``/``expf`` one lane at a time, which
made GELU the slowest op of a transformer after its matmuls."""

from __future__ import annotations

from typing import Any

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


def fast_math_pass() -> Any:
    """The Relax pass replacing those ops in every function of the module (fp32 only)."""
    import tvm
    from tvm import relax, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

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

    @mutator
    class FastMath(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            name = getattr(call.op, "name", None)
            if name not in (*unary, "relax.nn.softmax") or call.ty.dtype != "float32":
                return call
            if name == "relax.nn.softmax":
                return self.builder_.call_te(softmax, call.args[0], int(call.attrs.axis))
            return self.builder_.call_te(unary[name], call.args[0])

    @tvm.transform.module_pass(opt_level=0, name="FastMath")
    def fast_math(mod: Any, _ctx: Any) -> Any:
        rewriter = FastMath(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return fast_math
