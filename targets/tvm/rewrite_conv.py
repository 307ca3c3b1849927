"""The Relax rewrite of convolutions: each ``conv2d`` of a batch-1 NCHW activation with a constant
weight becomes the graph's preparation of its input and a ``call_tir`` to the direct
convolution (``kernels.conv_cpu``), which stores only the weight's nonzeros."""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.tvm.export import weight_digest
from targets.tvm.kernels.conv_cpu import ConvShape, conv_kernel, pack, prepare, supported
from targets.tvm.rewrite import Layer


def conv_shape(call: Any, weight: np.ndarray) -> ConvShape | None:
    """The shape of a ``conv2d`` call the kernel computes, or None to leave it to TVM."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if str(attrs.out_dtype) not in ("", "float32") or weight.dtype != np.float32:
        return None
    try:
        n, c, h, w = (int(d) for d in call.args[0].ty.shape)
    except (TypeError, AttributeError, ValueError):
        return None
    strides, dilation = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    if n != 1 or len(set(strides)) != 1 or len(set(dilation)) != 1:
        return None
    padding = tuple(int(v) for v in attrs.padding)
    o, _, kh, kw = weight.shape
    shape = ConvShape(c, h, w, o, (kh, kw), strides[0], padding, dilation[0], int(attrs.groups))  # type: ignore[arg-type]
    return shape if supported(shape) and min(shape.out_size) > 0 else None


def rewrite_convs(mod: Any, lanes: int, names: dict[bytes, str] | None = None) -> tuple[Any, list[Layer]]:
    """Replace each supported ``conv2d(x, const W)`` in ``main``; the layers, for the report."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    names = names or {}
    weight_pattern = is_const()
    pattern = is_op("relax.nn.conv2d")(wildcard(), weight_pattern)
    builder = relax.BlockBuilder(mod)
    layers: list[Layer] = []
    errors: list[Exception] = []

    def rewriter(call: Any, matches: dict) -> Any:
        weight = matches[weight_pattern].value.numpy()
        shape = conv_shape(call, weight)
        if shape is None:
            return call
        values, offsets, indptr = pack(weight, shape)
        symbol = f"conv_{len(layers)}"
        attrs = {"global_symbol": symbol, "tirx.is_scheduled": True, "op_pattern": 8}
        func = conv_kernel(shape, len(values), lanes).with_attrs(attrs)
        gvar = builder.add_func(func, symbol)
        oh, ow = shape.out_size
        o, cg, kh, kw = weight.shape
        layers.append(
            Layer(
                name=names.get(weight_digest(weight), f"conv{len(layers)}"),
                shape=(o, cg * kh * kw),
                batch=oh * ow,
                sparsity=round(1.0 - np.count_nonzero(weight) / weight.size, 4),
                format=f"conv{kh}x{kw}"
                + (f"-s{shape.stride}" if shape.stride > 1 else "")
                + (f"-g{shape.groups}" if shape.groups > 1 else ""),
                calls=None,
                times_ms={},
                cached=False,
                symbol=symbol,
            )
        )
        args = [prepare(call.args[0], shape, lanes), *(relax.const(a) for a in (values, offsets, indptr))]
        out = relax.call_tir(gvar, args, out_ty=relax.TensorType((o, oh, ow), "float32"))
        return relax.op.reshape(out, (1, o, oh, ow))

    def guarded(call: Any, matches: dict) -> Any:  # exceptions crossing TVM's FFI lose their type
        try:
            return rewriter(call, matches)
        except Exception as e:
            errors.append(e)
            return call

    main = rewrite_call(pattern, guarded, mod["main"])
    if errors:
        raise errors[0]
    mod = builder.get()
    mod["main"] = main
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return mod, layers
