"""The Relax rewrite of convolutions: each ``conv2d`` of a batch-1 NCHW activation with a constant
weight becomes the graph's preparation of its input and a ``call_tir`` to the direct
convolution (``kernels.conv_cpu``), which stores only the weight's nonzeros."""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.tvm.export import weight_digest
from targets.tvm.kernels.conv_cpu import ConvShape, conv_kernel, pack, prepare_kernel, supported
from targets.tvm.rewrite import Layer, rewrite_main


def zero_padding(pad: Any) -> tuple[int, int, int, int] | None:
    """The (top, left, bottom, right) zeros a ``pad`` call adds to an NCHW tensor, or None when it
    pads otherwise (another mode or value, the batch or channels)."""
    attrs = pad.attrs
    widths = [int(v) for v in attrs.pad_width]
    if (
        str(attrs.pad_mode) != "constant"
        or float(attrs.pad_value) != 0.0
        or len(widths) != 8
        or any(widths[:4])
    ):
        return None
    return widths[4], widths[6], widths[5], widths[7]


def conv_shape(
    call: Any, weight: np.ndarray, data: Any, extra: tuple[int, ...] = (0, 0, 0, 0)
) -> ConvShape | None:
    """The shape of a ``conv2d`` call the kernel computes on ``data`` (padded by ``extra`` first),
    or None to leave it to TVM."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return None
    if str(attrs.out_dtype) not in ("", "float32") or weight.dtype != np.float32:
        return None
    try:
        n, c, h, w = (int(d) for d in data.ty.shape)
    except (TypeError, AttributeError, ValueError):
        return None
    strides, dilation = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    if n != 1 or len(set(strides)) != 1 or len(set(dilation)) != 1:
        return None
    padding = tuple(int(v) + e for v, e in zip(attrs.padding, extra, strict=True))
    o, _, kh, kw = weight.shape
    shape = ConvShape(c, h, w, o, (kh, kw), strides[0], padding, dilation[0], int(attrs.groups))  # type: ignore[arg-type]
    return shape if supported(shape) and min(shape.out_size) > 0 else None


def fold_batch_norms(mod: Any, names: dict[bytes, str] | None = None) -> Any:
    """Fold each inference ``batch_norm`` of a ``conv2d`` with a constant weight into the weight
    (scaled per output channel; zeros stay zeros) and a bias added after it. ``names`` (by
    ``weight_digest``) learns the folded weights' names."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, wildcard

    weight, stats = is_const(), [is_const() for _ in range(4)]
    conv = is_op("relax.nn.conv2d")(wildcard(), weight)
    norm = is_op("relax.nn.batch_norm")(conv, *stats)
    pattern = is_tuple_get_item(norm, 0)

    def rewriter(call: Any, matches: dict) -> Any:
        attrs = matches[norm].attrs
        w = matches[weight].value.numpy()
        gamma, beta, mean, var = (matches[p].value.numpy().astype(np.float64) for p in stats)
        if bool(attrs.training) or int(attrs.axis) != 1 or w.dtype != np.float32:
            return call
        scale = (gamma if attrs.scale else 1.0) / np.sqrt(var + float(attrs.epsilon))
        shift = (beta if attrs.center else 0.0) - mean * scale
        folded = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        if names is not None and (name := names.get(weight_digest(w))) is not None:
            names[weight_digest(folded)] = name
        original = matches[conv]
        out = relax.Call(original.op, [original.args[0], relax.const(folded)], original.attrs)
        return relax.op.add(out, relax.const(shift.astype(np.float32).reshape(1, -1, 1, 1)))

    return rewrite_main(mod, pattern, rewriter)


def rewrite_convs(mod: Any, lanes: int, names: dict[bytes, str] | None = None) -> tuple[Any, list[Layer]]:
    """Replace each supported ``conv2d(x, const W)`` in ``main``; the layers, for the report."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    names = names or {}
    weight_pattern = is_const()
    pad_pattern = is_op("relax.nn.pad")(wildcard())  # explicit padding, as TF-style models have
    pattern = is_op("relax.nn.conv2d")(pad_pattern | wildcard(), weight_pattern)
    builder = relax.BlockBuilder(mod)
    layers: list[Layer] = []
    preparers: dict[tuple, Any] = {}  # one per input layout; CSE then shares the prepared input

    def rewriter(call: Any, matches: dict) -> Any:
        weight = matches[weight_pattern].value.numpy()
        data, extra = call.args[0], (0, 0, 0, 0)
        if pad_pattern in matches and (padding := zero_padding(matches[pad_pattern])) is not None:
            data, extra = matches[pad_pattern].args[0], padding  # the kernel pads as it prepares
        shape = conv_shape(call, weight, data, extra)
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
        if shape.reads_input_as_is(lanes):
            prepared = relax.op.reshape(data, (shape.prepared_size(lanes),))
        else:
            key = (shape.channels, shape.height, shape.width, shape.stride, shape.padding)
            if key not in preparers:
                name = f"prepare_conv_input_{len(preparers)}"
                func = prepare_kernel(shape, lanes).with_attrs({**attrs, "global_symbol": name})
                preparers[key] = builder.add_func(func, name)
            size = shape.prepared_size(lanes)
            prepared = relax.call_tir(preparers[key], [data], out_ty=relax.TensorType((size,), "float32"))
        args = [prepared, *(relax.const(a) for a in (values, offsets, indptr))]
        out = relax.call_tir(gvar, args, out_ty=relax.TensorType((o, oh, ow), "float32"))
        return relax.op.reshape(out, (1, o, oh, ow))

    mod = rewrite_main(mod, pattern, rewriter, builder, shared=True)
    return mod, layers
