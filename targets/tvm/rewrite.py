"""The Relax rewrites: each ``matmul(x, permute_dims(W))`` or ``matmul(x, W)`` with a constant
weight — linear layers, GPT-2's Conv1D, and each unrolled step of an LSTM/GRU/RNN — becomes a
``call_tir`` to the kernel chosen for it (``rewrite_matmuls``); the matmuls left over —
attention's, whose operands are both activations — become calls to a GEMM kernel
(``rewrite_gemms``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from targets.tvm.choose import Choice
from targets.tvm.export import weight_digest
from targets.tvm.kernels import Format, Packed, pack


@dataclass
class Layer:
    """One constant-weight matmul of the graph and the kernel it got. ``calls``: how many times
    one run of the built model calls the kernel (a call TVM folds away, such as the first step
    of a recurrent layer from a zero state, is not counted); None for TVM's own kernels."""

    name: str
    shape: tuple[int, int]
    batch: int
    sparsity: float
    format: str
    calls: int | None
    times_ms: dict[str, float]
    cached: bool
    symbol: str | None = None  # the kernel's function in the built module

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["symbol"]
        return out


def add_kernel(builder: Any, func: Any, symbol: str) -> Any:
    """Add our TIR function ``func`` to ``builder``'s module as ``symbol``: marked scheduled, so
    dlight leaves it alone, and opaque, so it is never fused into another function (it keeps
    its name, which ``count_calls`` looks for in the bytecode). Returns its global var."""
    attrs = {"global_symbol": symbol, "tirx.is_scheduled": True, "op_pattern": 8}
    return builder.add_func(func.with_attrs(attrs), symbol)


def count_calls(executable: Any, layers: list[Layer]) -> None:
    """Set each layer's ``calls`` from the VM's bytecode of ``main`` (after TVM's folding)."""
    import re

    called = re.findall(r"^\s*call\s+(\S+)", executable.as_text(), re.M)
    for layer in layers:
        layer.calls = called.count(layer.symbol) if layer.symbol else None


def rewrite_matmuls(
    mod: Any,
    choose: Callable[[np.ndarray, int], Choice],
    build: Callable[[Packed, int], Any],
    names: dict[bytes, str] | None = None,
    label: Callable[[Format], str] = lambda fmt: fmt.name,
) -> tuple[Any, list[Layer]]:
    """Replace each ``matmul(x, permute_dims(const W))`` and ``matmul(x, const W)`` in ``main``
    with a kernel call.

    ``choose`` picks the format per (weight, batch); ``build`` makes its TIR function, or None
    to keep the matmul for TVM's own schedule. One kernel is built per (weight, batch); the
    unrolled steps of a recurrent layer share it. ``names`` maps a weight's ``weight_digest`` to
    its parameter name, and ``label`` names a format, for the report.
    """
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    names = names or {}
    weight_pattern = is_const()
    transpose_pattern = is_op("relax.permute_dims")(weight_pattern)
    pattern = is_op("relax.matmul")(wildcard(), transpose_pattern | weight_pattern)
    kernels: dict[tuple[bytes, int], tuple[Any, list[Any], Layer]] = {}
    builder = relax.BlockBuilder(mod)

    def rewriter(call: Any, matches: dict) -> Any:
        x = call.args[0]
        if transpose_pattern in matches:  # x @ W.T: a linear layer's weight (N x K)
            axes = matches[transpose_pattern].attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return call
        constant = matches[weight_pattern].value.numpy()
        if constant.ndim != 2 or constant.dtype != np.float32 or call.ty.dtype != "float32":
            return call
        # x @ W (GPT-2's Conv1D stores K x N): the kernels take it transposed
        weight = constant if transpose_pattern in matches else np.ascontiguousarray(constant.T)
        shape = [int(d) for d in x.ty.shape]
        n, k = weight.shape
        if len(shape) < 2 or shape[-1] != k:
            return call
        batch = int(np.prod(shape[:-1]))
        key = (weight_digest(weight), batch)  # W and W.T of one parameter are two kernels
        if key not in kernels:
            choice = choose(weight, batch)
            packed: Packed = pack(weight, choice.format)
            symbol = f"{choice.format.name.replace('-', '_')}_{len(kernels)}"
            func = build(packed, batch)
            gvar = None if func is None else add_kernel(builder, func, symbol)
            layer = Layer(
                name=names.get(weight_digest(constant), f"weight{len(kernels)}"),
                shape=(n, k),
                batch=batch,
                sparsity=round(1.0 - np.count_nonzero(weight) / weight.size, 4),
                format=label(choice.format),
                calls=None,
                times_ms={f: round(t, 5) for f, t in choice.times_ms.items()},
                cached=choice.cached,
                symbol=None if func is None else symbol,
            )
            kernels[key] = (gvar, [relax.const(a) for a in packed.arrays], layer)
        gvar, consts, layer = kernels[key]
        if gvar is None:
            return call
        flat = relax.op.reshape(x, (batch, k)) if len(shape) != 2 else x
        out = relax.call_tir(gvar, [flat, *consts], out_ty=relax.TensorType((batch, n), "float32"))
        return relax.op.reshape(out, (*shape[:-1], n)) if len(shape) != 2 else out

    mod = rewrite_main(mod, pattern, rewriter, builder)
    return mod, [layer for _, _, layer in kernels.values()]


def rewrite_main(
    mod: Any, pattern: Any, rewriter: Callable[[Any, dict], Any], builder: Any = None, shared: bool = False
) -> Any:
    """``main`` with ``rewriter`` applied to every match of ``pattern``, the functions added to
    ``builder`` beside it, and what no longer reaches the output dropped (``shared``: first
    merge equal expressions, such as one activation's preparation read by several kernels; a
    function the rewriter added that ``main`` no longer calls is dropped too). An
    exception ``rewriter`` raises comes out here with its type (crossing TVM's FFI loses it)."""
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    errors: list[Exception] = []

    def guarded(call: Any, matches: dict) -> Any:
        try:
            return rewriter(call, matches)
        except Exception as e:
            errors.append(e)
            return call

    main = rewrite_call(pattern, guarded, mod["main"])
    if errors:
        raise errors[0]
    before = {gvar.name_hint for gvar in mod.get_global_vars()}
    mod = builder.get() if builder is not None else mod
    mod["main"] = main
    if shared:
        mod = relax.transform.EliminateCommonSubexpr()(mod)
    return drop_unused(mod, before)


def drop_unused(mod: Any, before: set[str]) -> Any:
    """``mod`` without what no longer reaches ``main``'s output: dead bindings, and the functions
    added since ``before`` (names) that ``main`` does not call (DCE keeps a function with a
    global symbol)."""
    from tvm import relax

    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    called = {gvar.name_hint for gvar in relax.analysis.all_global_vars(mod["main"])}
    for gvar in mod.get_global_vars():
        if gvar.name_hint not in before | called | {"main"}:
            del mod[gvar]
    return mod


def rewrite_gemms(mod: Any, kernel: Callable[[int, int, int, int], Any]) -> tuple[Any, int]:
    """Replace each fp32 ``matmul`` of static shape left in ``main`` with a call to
    ``kernel(g, m, k, n)``, the TIR function of ``g`` products of (m x k) @ (k x n): the leading
    dimensions of both operands equal (one product per head), or ``b`` a matrix (the rows of
    ``a`` are then one product's). Broadcasting and vector operands are left to TVM. Returns the
    module and the number of matmuls rewritten."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    functions: dict[tuple[int, int, int, int], Any] = {}
    builder = relax.BlockBuilder(mod)
    rewritten = 0

    def rewriter(call: Any, _matches: dict) -> Any:
        nonlocal rewritten
        a, b = call.args
        if any(e.ty.dtype != "float32" for e in (a, b, call)):
            return call
        try:
            sa, sb = ([int(d) for d in e.ty.shape] for e in (a, b))
        except (TypeError, AttributeError):  # symbolic or unknown shapes
            return call
        if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
            return call
        k, n = sb[-2:]
        if len(sb) == 2:
            g, m = 1, int(np.prod(sa[:-1]))
        elif sa[:-2] == sb[:-2]:
            g, m = int(np.prod(sa[:-2])), sa[-2]
        else:
            return call
        key = (g, m, k, n)
        if key not in functions:
            symbol = f"gemm_activations_{len(functions)}"  # beside the weight kernels named gemm_N
            functions[key] = add_kernel(builder, kernel(*key), symbol)
        rewritten += 1
        out = relax.call_tir(
            functions[key],
            [relax.op.reshape(a, (g, m, k)), relax.op.reshape(b, (g, k, n))],
            out_ty=relax.TensorType((g, m, n), "float32"),
        )
        return relax.op.reshape(out, [int(d) for d in call.ty.shape])

    return rewrite_main(mod, is_op("relax.matmul")(wildcard(), wildcard()), rewriter, builder), rewritten
