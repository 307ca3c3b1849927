"""The Relax rewrite of convolutions: each ``conv2d`` of a batch-1 NCHW activation with a constant
weight becomes the graph's preparation of its input and a ``call_tir`` to the direct
convolution (``kernels.conv_cpu``), which stores only the weight's nonzeros. The elementwise ops
after it — a constant bias per channel, a residual added, ReLU or ReLU6 — go into the kernel's
epilogue."""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.tvm.export import static_shape, weight_digest
from targets.tvm.kernels.conv_cpu import (
    ConvShape,
    Epilogue,
    channel_blocks,
    conv_kernel,
    pack,
    prepare_kernel,
    supported,
)
from targets.tvm.rewrite import Layer, add_kernel, rewrite_main


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
    dims = static_shape(data)
    if dims is None or len(dims) != 4:
        return None
    n, c, h, w = dims
    strides, dilation = [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation]
    if n != 1 or len(set(strides)) != 1 or len(set(dilation)) != 1:
        return None
    padding = tuple(int(v) + e for v, e in zip(attrs.padding, extra, strict=True))
    o, _, kh, kw = weight.shape
    shape = ConvShape(c, h, w, o, (kh, kw), strides[0], padding, dilation[0], int(attrs.groups))  # type: ignore[arg-type]
    return shape if supported(shape) and min(shape.out_size) > 0 else None


def fold_batch_norms(mod: Any, names: dict[bytes, str] | None = None) -> Any:
    """Fold each inference ``batch_norm`` of a ``conv2d`` with a constant weight (and a constant
    bias, if it has one) into the weight (scaled per output channel; zeros stay zeros) and a bias
    added after it. ``names`` (by ``weight_digest``) learns the folded weights' names."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, wildcard

    weight, bias, stats = is_const(), is_const(), [is_const() for _ in range(4)]
    conv = is_op("relax.nn.conv2d")(wildcard(), weight)
    biased = is_op("relax.add")(conv, bias | is_op("relax.reshape")(bias, wildcard()))
    norm = is_op("relax.nn.batch_norm")(biased | conv, *stats)
    pattern = is_tuple_get_item(norm, 0)

    def rewriter(call: Any, matches: dict) -> Any:
        attrs = matches[norm].attrs
        w = matches[weight].value.numpy()
        gamma, beta, mean, var = (matches[p].value.numpy().astype(np.float64) for p in stats)
        if bool(attrs.training) or int(attrs.axis) != 1 or w.dtype != np.float32:
            return call
        if biased in matches:
            b = channel_bias(matches[biased], matches[bias].value.numpy(), w.shape[0])
            if b is None:
                return call
            mean = mean - b  # (conv + b - mean) * scale + beta
        scale = (gamma if attrs.scale else 1.0) / np.sqrt(var + float(attrs.epsilon))
        shift = (beta if attrs.center else 0.0) - mean * scale
        folded = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
        if names is not None and (name := names.get(weight_digest(w))) is not None:
            names[weight_digest(folded)] = name
        original = matches[conv]
        out = relax.Call(original.op, [original.args[0], relax.const(folded)], original.attrs)
        return relax.op.add(out, relax.const(shift.astype(np.float32).reshape(1, -1, 1, 1)))

    return rewrite_main(mod, pattern, rewriter)


def channel_bias(add: Any, constant: np.ndarray, channels: int) -> np.ndarray | None:
    """The constant that ``add`` adds to a convolution's NCHW output as a bias per output channel
    (what it adds broadcasts as (1, O, 1, 1) does), or None when it adds anything else."""
    if (shape := static_shape(add.args[1])) is None:
        return None
    shape = [1] * (4 - len(shape)) + shape
    if constant.dtype != np.float32 or constant.size != channels or shape != [1, channels, 1, 1]:
        return None
    return constant.reshape(-1)


def clamp_bounds(call: Any) -> tuple[float | None, float | None] | None:
    """The bounds of a ``relu`` or ``clip`` call, None for any other call."""
    name = call.op.name
    if name == "relax.nn.relu":
        return 0.0, None
    if name == "relax.clip":
        bounds = [getattr(arg, "value", None) for arg in call.args[1:3]]  # PrimValues or immediates
        bounds = [getattr(b, "value", b) for b in bounds]
        if all(isinstance(b, (int, float)) for b in bounds):
            return float(bounds[0]), float(bounds[1])
    return None


def convolutions_first(mod: Any) -> Any:
    """``main`` with the operands of each ``add`` ordered so that a convolution's output (with a
    bias added, before one without) comes first: the pattern matcher tries an ``add``'s operands
    in order first, so the residual the epilogue takes is then the second."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    values = relax.analysis.get_var2val(mod["main"])

    def rank(var: Any) -> int:  # 2: conv + bias, 1: conv, 0: anything else
        value = values.get(var)
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return 0
        if value.op.name == "relax.nn.conv2d":
            return 1
        if value.op.name == "relax.add" and rank(value.args[0]) == 1:
            return 2
        return 0

    def rewriter(call: Any, _matches: dict) -> Any:
        a, b = call.args
        return relax.op.add(b, a) if rank(b) > rank(a) else call

    return rewrite_main(mod, is_op("relax.add")(wildcard(), wildcard()), rewriter)


def rewrite_convs(mod: Any, lanes: int, names: dict[bytes, str] | None = None) -> tuple[Any, list[Layer]]:
    """Replace each supported ``conv2d(x, const W)`` in ``main``, with the bias, residual and
    clamp after it; the layers, for the report."""
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    names = names or {}
    mod = convolutions_first(mod)
    weight_pattern = is_const()
    pad_pattern = is_op("relax.nn.pad")(wildcard())  # explicit padding, as TF-style models have
    conv_pattern = is_op("relax.nn.conv2d")(pad_pattern | wildcard(), weight_pattern)
    bias_pattern, residual_pattern = is_const(), wildcard()
    bias_shaped = is_op("relax.reshape")(bias_pattern, wildcard())  # a torch conv's own bias
    biased = is_op("relax.add")(conv_pattern, bias_pattern | bias_shaped)
    # alternatives in order (a bias is not taken for a residual); the residual is the sum's
    # second operand (``convolutions_first``)
    sums = [is_op("relax.add")(biased, residual_pattern), is_op("relax.add")(conv_pattern, residual_pattern)]
    before_clamp = sums[0] | biased | sums[1] | conv_pattern
    clamped = is_op("relax.nn.relu")(before_clamp) | is_op("relax.clip")(before_clamp, wildcard(), wildcard())
    # the longest chain first: a chain the kernel cannot take is tried again without its end
    pattern = clamped | before_clamp
    builder = relax.BlockBuilder(mod)
    layers: list[Layer] = []
    preparers: dict[tuple, Any] = {}  # one per input layout; CSE then shares the prepared input

    def rewriter(call: Any, matches: dict) -> Any:
        conv = matches[conv_pattern]
        weight = matches[weight_pattern].value.numpy()
        data, extra = conv.args[0], (0, 0, 0, 0)
        if pad_pattern in matches and (padding := zero_padding(matches[pad_pattern])) is not None:
            data, extra = matches[pad_pattern].args[0], padding  # the kernel pads as it prepares
        shape = conv_shape(conv, weight, data, extra)
        if shape is None:
            return call
        o = weight.shape[0]
        oh, ow = shape.out_size
        bias = residual = None
        if biased in matches:
            bias = channel_bias(matches[biased], matches[bias_pattern].value.numpy(), o)
            if bias is None:
                return call
        if (add := next((p for p in sums if p in matches), None)) is not None:
            residual = matches[add].args[1]  # the variable (the match is its value)
            if static_shape(residual) != [1, o, oh, ow] or residual.ty.dtype != "float32":
                return call
        low = high = None
        if call.op.name in ("relax.nn.relu", "relax.clip"):
            if (bounds := clamp_bounds(call)) is None:
                return call
            low, high = bounds
        epilogue = Epilogue(bias is not None, residual is not None, low, high)
        blocks = channel_blocks(shape, int(np.count_nonzero(weight)), lanes)
        values, offsets, indptr = pack(weight, shape, blocks)
        symbol = f"conv_{len(layers)}"
        func = conv_kernel(shape, len(values), lanes, epilogue=epilogue, blocks=blocks)
        gvar = add_kernel(builder, func, symbol)
        _, cg, kh, kw = weight.shape
        layers.append(
            Layer(
                name=names.get(weight_digest(weight), f"conv{len(layers)}"),
                shape=(o, cg * kh * kw),
                batch=oh * ow,
                sparsity=round(1.0 - np.count_nonzero(weight) / weight.size, 4),
                format=f"conv{kh}x{kw}"
                + (f"-s{shape.stride}" if shape.stride > 1 else "")
                + (f"-g{shape.groups}" if shape.groups > 1 else "")
                + epilogue.label(),
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
                preparers[key] = add_kernel(builder, prepare_kernel(shape, lanes), name)
            size = shape.prepared_size(lanes)
            prepared = relax.call_tir(preparers[key], [data], out_ty=relax.TensorType((size,), "float32"))
        unused = relax.const(np.zeros(1, np.float32))
        args = [
            prepared,
            *(relax.const(a) for a in (values, offsets, indptr)),
            unused if bias is None else relax.const(bias),
            unused if residual is None else relax.op.reshape(residual, (o, oh, ow)),
        ]
        out = relax.call_tir(gvar, args, out_ty=relax.TensorType((o, oh, ow), "float32"))
        return relax.op.reshape(out, (1, o, oh, ow))

    mod = rewrite_main(mod, pattern, rewriter, builder, shared=True)
    # a chain's inner part may have been rewritten too before its whole was: drop what is unused
    kept = {gvar.name_hint for gvar in mod.get_global_vars()}
    return mod, [layer for layer in layers if layer.symbol in kept]
