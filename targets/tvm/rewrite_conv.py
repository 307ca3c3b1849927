"""The Relax rewrite of convolutions: each ``conv2d`` of a batch-1 NCHW activation with a constant
weight becomes the graph's preparation of its input and a ``call_tir`` to the direct
convolution (``kernels.conv_cpu``), its weight stored by blocks of output channels as timed
fastest. The elementwise ops after it — a constant bias per channel, a residual added, ReLU or
ReLU6 — go into the kernel's epilogue (``conv_graph`` reads them in the graph), and its output
is stored where its reader wants it (``conv_layout``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from targets.tvm.choose import Choice, KernelChooser
from targets.tvm.conv_graph import (
    channel_bias,
    clamp_bounds,
    conv_shape,
    convolutions_first,
    readers,
    use_counts,
    zero_padding,
)
from targets.tvm.conv_layout import consumer_layout, prepared_layout, reuse_stored
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
)
from targets.tvm.rewrite import Layer, add_kernel, rewrite_main


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
    prepared_as: dict[str, Stored] = {}  # preparations of inputs, as layouts

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
        s, (h3, w3) = stored.stride, stored.phase_size(oh, ow)
        planes = relax.op.strided_slice(out, axes=[0], begin=[0], end=[o * s * s * h3 * w3])
        if s == 1:
            grid = relax.op.reshape(planes, (1, o, h3, w3))
        else:  # the phase planes back in place: (row, row phase) and (column, column phase)
            phased = relax.op.reshape(planes, (1, o, s, s, h3, w3))
            grid = relax.op.reshape(relax.op.permute_dims(phased, [0, 1, 4, 2, 5, 3]), (1, o, h3 * s, w3 * s))
        window = [stored.top, stored.left], [stored.top + oh, stored.left + ow]
        return relax.op.strided_slice(grid, [2, 3], *window)

    mod = rewrite_main(mod, pattern, rewriter, builder, shared=True)
    mod = reuse_stored(mod, stored_by, prepared_as)
    # a chain's inner part may have been rewritten too before its whole was: drop what is unused
    kept = {gvar.name_hint for gvar in mod.get_global_vars()}
    return mod, [layer for layer in layers if layer.symbol in kept]
