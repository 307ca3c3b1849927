"""The Relax rewrite of convolutions: each ``conv2d`` of a batch-1 NCHW activation with a constant
weight becomes the graph's preparation of its input and a ``call_tir`` to the direct
convolution (``kernels.conv_cpu``), which stores only the weight's nonzeros. The elementwise ops
after it — a constant bias per channel, a residual added, ReLU or ReLU6 — go into the kernel's
epilogue."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from targets.tvm.choose import Choice, KernelChooser
from targets.tvm.export import static_shape, weight_digest
from targets.tvm.kernels import Format, block_fill
from targets.tvm.kernels.conv_cpu import (
    ConvShape,
    Epilogue,
    Stored,
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


def use_counts(func: Any) -> dict[Any, int]:
    """How many bindings (and the output) of ``func`` read each variable."""
    from tvm import relax

    counts: dict[Any, int] = {}
    exprs = [b.value for block in func.body.blocks for b in block.bindings] + [func.body.body]
    for expr in exprs:
        for var in relax.analysis.free_vars(expr):
            counts[var] = counts.get(var, 0) + 1
    return counts


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


def storage_name(rows: int) -> str:
    """The weight's storage for blocks of ``rows`` output channels: ``csr`` (the nonzeros),
    ``bsr4x1`` (blocks of 4 output channels by one tap)."""
    return "csr" if rows == 1 else f"bsr{rows}x1"


DENSE_FILL = 0.75  # the stored fill above which blocks of output channels are the rule's pick


def block_candidates(weight: np.ndarray, groups: int) -> list[Format]:
    """The storages timed for a convolution's weight: blocks of 1, 2 and 4 output channels (of
    one group) sharing their taps, the rule's pick first: the largest block whose stored taps
    are at least ``DENSE_FILL`` nonzeros — a dense or nearly dense weight loads each input
    vector once for several output channels; a sparse one stores only its nonzeros."""
    per_group = weight.shape[0] // groups
    flat = weight.reshape(weight.shape[0], -1)
    rows = [r for r in (1, 2, 4) if per_group % r == 0]
    pick = max(r for r in rows if r == 1 or block_fill(flat, (r, 1)) >= DENSE_FILL)
    return [Format("bsr", (r, 1), 1) for r in sorted(rows, key=lambda r: r != pick)]


def timing_call(
    weight: np.ndarray, shape: ConvShape, epilogue: Epilogue, lanes: int, fmt: Format
) -> tuple[Any, list[np.ndarray]]:
    """The convolution kernel for ``weight`` stored as ``fmt`` and arguments to time it on."""
    rows = fmt.block[0]
    packed = pack(weight, shape, channel_blocks(shape, taps(weight, shape, rows), lanes, rows), rows)
    rng = np.random.default_rng(0)
    o, (oh, ow) = shape.out_channels, shape.out_size
    unused = np.zeros(1, np.float32)
    arrays = [
        rng.standard_normal(shape.prepared_size(lanes)).astype(np.float32),
        *packed,
        rng.standard_normal(o).astype(np.float32) if epilogue.bias else unused,
        rng.standard_normal((o, oh, ow)).astype(np.float32) if epilogue.residual else unused,
        np.zeros(o * oh * ow, np.float32),
    ]
    return kernel(shape, packed, lanes, epilogue, rows), arrays


def taps(weight: np.ndarray, shape: ConvShape, rows: int) -> int:
    """Taps stored for ``weight`` by blocks of ``rows`` output channels."""
    return len(pack(weight, shape, 1, rows)[1])


def kernel(
    shape: ConvShape,
    packed: tuple[np.ndarray, ...],
    lanes: int,
    epilogue: Epilogue,
    rows: int,
    stored: Stored | None = None,
) -> Any:
    """``conv_kernel`` for the weight ``pack`` stored as ``packed``, its output as ``stored`` says
    (by default, as it is)."""
    _, offsets, indptr = packed
    blocks = (len(indptr) - 1) // (shape.out_channels // rows)
    layout = stored or Stored()
    return conv_kernel(shape, len(offsets), lanes, epilogue=epilogue, blocks=blocks, rows=rows, stored=layout)


def readers(func: Any) -> dict[Any, list[Any]]:
    """The values of ``func``'s bindings that read each variable."""
    from tvm import relax

    out: dict[Any, list[Any]] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            for var in relax.analysis.free_vars(binding.value):
                out.setdefault(var, []).append(binding.value)
    return out


def prepared_layout(shape: ConvShape, lanes: int) -> Stored:
    """The prepared input of a stride-1 convolution as a ``Stored`` layout."""
    h2, w2 = shape.phase_size
    return Stored(*shape.padding, shape.prepared_size(lanes) - shape.channels * h2 * w2)  # type: ignore[misc]


def consumer_layout(root: Any, graph: tuple[dict, dict, dict], lanes: int) -> Stored | None:
    """The layout to store a chain's output ``root`` in when its only reader is a stride-1
    convolution whose input the kernel prepares (through an explicit zero ``pad`` read only by
    it, as TF-style models have); None otherwise. ``graph``: ``main``'s use counts, readers
    (``readers``) and each value's variable."""
    import tvm

    uses, reads, var_of = graph

    def only_reader(var: Any) -> Any:
        values = reads.get(var, [])
        return values[0] if uses.get(var, 0) == 1 and len(values) == 1 else None

    value, data, extra = only_reader(root), root, (0, 0, 0, 0)
    if is_op_call(value, "relax.nn.pad") and (padding := zero_padding(value)) is not None:
        data, extra, value = var_of.get(value), padding, only_reader(var_of.get(value))
    if not is_op_call(value, "relax.nn.conv2d") or not value.args[0].same_as(data):
        return None
    if not isinstance(value.args[1], tvm.ir.expr.Constant):
        return None
    shape = conv_shape(value, value.args[1].value.numpy(), root, extra)
    if shape is None or shape.stride != 1 or shape.flat(lanes).reads_input_as_is(lanes):
        return None
    return prepared_layout(shape.flat(lanes), lanes)


def is_op_call(value: Any, op: str) -> bool:
    """Whether ``value`` is a call of the operator ``op``."""
    import tvm
    from tvm import relax

    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op


def reuse_stored(mod: Any, stored_by: dict[str, Stored], prepared_as: dict[str, Stored]) -> Any:
    """``main`` with each preparation of a convolution's input that would copy the output of a
    kernel which stored it in that very layout (``stored_by``: by kernel symbol; the view of it
    as the output tensor is the preparation's only input) replaced by that output."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    values = relax.analysis.get_var2val(mod["main"])
    uses = use_counts(mod["main"])

    def source(var: Any, op: str) -> Any:
        value = values.get(var)
        return value.args[0] if uses.get(var, 0) == 1 and is_op_call(value, op) else None

    def rewriter(call: Any, _matches: dict) -> Any:
        gvar, args = call.args
        if not isinstance(gvar, relax.GlobalVar) or gvar.name_hint not in prepared_as:
            return call
        view = source(args.fields[0], "relax.strided_slice")  # the output's window in its planes
        flat = source(view, "relax.reshape") if view is not None else None
        stored = source(flat, "relax.strided_slice") if flat is not None else None
        kernel_call = values.get(stored) if stored is not None else None
        if not is_op_call(kernel_call, "relax.call_tir"):
            return call
        if stored_by.get(kernel_call.args[0].name_hint) != prepared_as[gvar.name_hint]:
            return call
        return stored

    return rewrite_main(mod, is_op("relax.call_tir")(wildcard(), wildcard()), rewriter)


def rewrite_convs(
    mod: Any, lanes: int, names: dict[bytes, str] | None = None, chooser: KernelChooser | None = None
) -> tuple[Any, list[Layer]]:
    """Replace each supported ``conv2d(x, const W)`` in ``main``, with the bias, residual and
    clamp after it; the layers, for the report. ``chooser`` times the weight's storages
    (``block_candidates``); without it, the rule's pick."""
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
    uses = use_counts(mod["main"])
    var_of = {value: var for var, value in relax.analysis.get_var2val(mod["main"]).items()}
    reads = readers(mod["main"])
    stored_by: dict[str, Stored] = {}  # kernels storing their output in a consumer's layout
    prepared_as: dict[str, Stored] = {}  # preparations of stride-1 inputs, as layouts

    def rewriter(call: Any, matches: dict) -> Any:
        inner = [matches[p] for p in (conv_pattern, biased, *sums) if p in matches]
        if any(uses.get(var_of.get(v), 0) > 1 for v in inner if not v.same_as(call)):
            return call  # a value inside the chain is read elsewhere: the chain would compute it twice
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
        stored = consumer_layout(var_of.get(call), (uses, reads, var_of), lanes) or Stored()
        if stored == Stored():
            shape = shape.flat(lanes)  # a 1x1 convolution's planes as one row, when it reads them as is
        kinds = block_candidates(weight, shape.groups)
        choice = Choice(kinds[0])
        if chooser is not None and len(kinds) > 1:
            # timed without the epilogue: one decision for the chain and the parts of it matched
            make = partial(timing_call, weight, shape, Epilogue(), lanes)
            key = f"conv-{shape.channels}x{shape.height}x{shape.width}-s{shape.stride}-p{shape.padding}"
            choice = chooser.choose_kernel(weight, 1, key, kinds, make)
        rows = choice.format.block[0]
        blocks = channel_blocks(shape, taps(weight, shape, rows), lanes, rows)
        packed = pack(weight, shape, blocks, rows)
        symbol = f"conv_{len(layers)}"
        gvar = add_kernel(builder, kernel(shape, packed, lanes, epilogue, rows, stored), symbol)
        if stored != Stored():
            stored_by[symbol] = stored
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
                + f"-{storage_name(rows)}"
                + epilogue.label(),
                calls=None,
                times_ms={
                    storage_name(f.block[0]): round(choice.times_ms[chooser.label(f)], 5)
                    for f in kinds
                    if chooser is not None and chooser.label(f) in choice.times_ms
                },
                cached=choice.cached,
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
                if shape.stride == 1:
                    prepared_as[name] = prepared_layout(shape, lanes)
            size = shape.prepared_size(lanes)
            prepared = relax.call_tir(preparers[key], [data], out_ty=relax.TensorType((size,), "float32"))
        unused = relax.const(np.zeros(1, np.float32))
        args = [
            prepared,
            *(relax.const(a) for a in packed),
            unused if bias is None else relax.const(bias),
            unused if residual is None else relax.op.reshape(residual, (o, *shape.out_size)),
        ]
        size = stored.size(o, *shape.out_size)
        out = relax.call_tir(gvar, args, out_ty=relax.TensorType((size,), "float32"))
        if stored == Stored():
            return relax.op.reshape(out, (1, o, oh, ow))
        # the output tensor as a view of its planes: the consumer's preparation then reads the
        # kernel's output itself (``reuse_stored``); anything else still gets the right tensor
        h3, w3 = oh + stored.top + stored.bottom, ow + stored.left + stored.right
        planes = relax.op.strided_slice(out, axes=[0], begin=[0], end=[o * h3 * w3])
        window = [stored.top, stored.left], [stored.top + oh, stored.left + ow]
        return relax.op.strided_slice(relax.op.reshape(planes, (1, o, h3, w3)), [2, 3], *window)

    mod = rewrite_main(mod, pattern, rewriter, builder, shared=True)
    mod = reuse_stored(mod, stored_by, prepared_as)
    # a chain's inner part may have been rewritten too before its whole was: drop what is unused
    kept = {gvar.name_hint for gvar in mod.get_global_vars()}
    return mod, [layer for layer in layers if layer.symbol in kept]
