"""What the convolution rewrite reads in the Relax graph — a ``conv2d``'s shape, the bias, padding
and clamp around it, who reads each value — and the graph changes it needs first: BatchNorm
folded into the weight, the operands of each sum ordered."""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.tvm.export import static_shape, weight_digest
from targets.tvm.kernels.conv_cpu import ConvShape, supported
from targets.tvm.rewrite import rewrite_main


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


def use_counts(func: Any) -> dict[Any, int]:
    """How many bindings (and the output) of ``func`` read each variable."""
    from tvm import relax

    counts: dict[Any, int] = {}
    exprs = [b.value for block in func.body.blocks for b in block.bindings] + [func.body.body]
    for expr in exprs:
        for var in relax.analysis.free_vars(expr):
            counts[var] = counts.get(var, 0) + 1
    return counts


def readers(func: Any) -> dict[Any, list[Any]]:
    """The values of ``func``'s bindings that read each variable."""
    from tvm import relax

    out: dict[Any, list[Any]] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for var in relax.analysis.free_vars(binding.value):
                out.setdefault(var, []).append(binding.value)
    return out


def is_op_call(value: Any, op: str) -> bool:
    """Whether ``value`` is a call of the operator ``op``."""
    import tvm
    from tvm import relax

    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op


def convolutions_first(mod: Any) -> Any:
    """``main`` with the operands of each ``add`` ordered so that a convolution's output (with a
    bias added, before one without) comes first: the pattern matcher tries an ``add``'s operands
    in order first, so the residual the epilogue takes is then the second. A convolution whose
    output is read elsewhere too ranks last: its kernel cannot add the residual."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    values = relax.analysis.get_var2val(mod["main"])
    uses = use_counts(mod["main"])

    def rank(var: Any) -> int:  # 2: conv + bias, 1: conv, 0: anything else
        value = values.get(var)
        if uses.get(var, 0) > 1 or not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
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
