"""Direct convolution on a CPU for a constant weight, dense or pruned: every ``conv2d`` of a
batch-1 NCHW model (any kernel size, stride, padding, dilation at stride 1, groups — depthwise
included) through one kernel (Park et al. 2017's direct sparse convolution, register-blocked).

The input is prepared once by the graph (``prepare``): padded, and for stride ``s`` split into
its ``s x s`` phases, so that every output row reads a contiguous run of the prepared input for
each weight. Each nonzero weight ``W[o, c, i, j]`` is then one offset into it (``pack``): the
output tile ``Y[o, oh0:oh0+RT, ow0:ow0+TW]`` accumulates ``value * X'[offset + oh * W' + ow]``
over the nonzeros of output channel ``o``, in vector registers. Zero weights are never stored,
so a dense weight is the case of 100% fill and a pruned one skips its zeros. Work items are
spatial tiles (times groups of output channels when the tiles are few); the input around a tile
stays in cache while every output channel passes it.

What follows the convolution in the graph is done as each tile is stored (``Epilogue``): the
bias (a folded BatchNorm's shift), a residual input added, a clamp (ReLU, ReLU6), so that the
output is written once instead of once per elementwise op.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

VECTORS = 8  # vector accumulators per output tile


@dataclass(frozen=True)
class ConvShape:
    """A ``conv2d`` of a batch-1 NCHW input: sizes, and the layout of its prepared input."""

    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: int
    groups: int

    @property
    def out_size(self) -> tuple[int, int]:
        (kh, kw), (top, left, bottom, right) = self.kernel, self.padding
        d, s = self.dilation, self.stride
        return (
            (self.height + top + bottom - d * (kh - 1) - 1) // s + 1,
            (self.width + left + right - d * (kw - 1) - 1) // s + 1,
        )

    @property
    def phase_size(self) -> tuple[int, int]:
        """Rows and columns of one phase of the padded input (the padded sizes over the stride)."""
        top, left, bottom, right = self.padding
        s = self.stride
        return -(-(self.height + top + bottom) // s), -(-(self.width + left + right) // s)

    def tile(self, lanes: int, rows: int = 1) -> tuple[int, int]:
        """Output rows and columns per tile, for blocks of ``rows`` output channels: two vectors
        of a row (one when the output is narrower) by as many rows as keep ``VECTORS``
        accumulators. A small tile keeps the input it reads across every channel
        (C x (RT + KH - 1) x (TW + KW - 1) floats) in L1 while all output channels pass it;
        wide row tiles measured 2x slower. One vector is the width when it computes fewer
        columns twice (the last tile of a row shifts left): a 56-wide row is 7 tiles of 8, not
        4 of 16 (64 columns); measured 1.11-1.16x on ResNet-18's and MobileNetV2's 56x56 layers."""
        oh, ow = self.out_size
        tw = 2 * lanes if ow >= 2 * lanes else lanes
        if -(-ow // lanes) * lanes < -(-ow // tw) * tw:
            tw = lanes
        rt = min(oh, max(1, VECTORS // (tw // lanes) // rows))
        while rt * rows * (tw // lanes) * 2 <= VECTORS and tw * 2 <= ow:  # few rows: wider
            tw *= 2
        return rt, tw

    def flat(self, lanes: int) -> ConvShape:
        """A 1x1 convolution of stride 1 without padding as one of a single row of every position
        (its input and output planes are contiguous), when it has two vectors of them: tiles then
        run along the whole plane, not along its rows (measured 1.1-1.6x on MobileNetV2's and
        ResNet-18's 1x1 layers, none prepared)."""
        pointwise = self.kernel == (1, 1) and self.stride == 1 and not any(self.padding)
        if pointwise and self.height > 1 and self.height * self.width >= 2 * lanes:
            return replace(self, height=1, width=self.height * self.width)
        return self

    def reads_input_as_is(self, lanes: int) -> bool:
        """A 1x1 convolution of stride 1 without padding whose tiles fit in its rows reads the
        input itself: no copy is prepared."""
        return (
            self.kernel == (1, 1) and self.stride == 1 and not any(self.padding) and self.out_size[1] >= lanes
        )

    def prepared_size(self, lanes: int) -> int:
        """Floats of the prepared input: every phase plane, and one tile row of zeros after them
        (a tile wider than the output reads past the last row)."""
        h2, w2 = self.phase_size
        slack = 0 if self.reads_input_as_is(lanes) else self.tile(lanes)[1]
        return self.channels * self.stride**2 * h2 * w2 + slack


@dataclass(frozen=True)
class Epilogue:
    """What the kernel applies to each output as it stores it, in this order: a bias per output
    channel, a residual (a tensor of the output's shape) added, a clamp to [low, high] (ReLU:
    ``low=0``; ReLU6: ``low=0, high=6``)."""

    bias: bool = False
    residual: bool = False
    low: float | None = None
    high: float | None = None

    def label(self) -> str:
        """The epilogue in a format's name: ``+bias+residual+relu``."""
        names = {(None, None): "", (0.0, None): "relu", (0.0, 6.0): "relu6"}
        clamp = names.get((self.low, self.high), "clip")
        parts = ["bias"] * self.bias + ["residual"] * self.residual + [clamp] * bool(clamp)
        return "".join(f"+{p}" for p in parts)


@dataclass(frozen=True)
class Stored:
    """Where the kernel stores its output: padded by ``top``, ``left``, ``bottom``, ``right`` zeros
    and, for ``stride`` s, split into its s x s phases — per output channel s x s planes of
    ceil((OH + top + bottom) / s) x ceil((OW + left + right) / s) floats, the padded position
    (R, C) in plane (R % s, C % s) at (R // s, C // s) — then ``slack`` zeros. That is the
    prepared input of the convolution of stride s reading the output
    (``ConvShape.prepared_size``), which then needs no copy of it; the default stores the output
    as it is."""

    top: int = 0
    left: int = 0
    bottom: int = 0
    right: int = 0
    slack: int = 0
    stride: int = 1

    def phase_size(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of one phase plane of an output of ``height`` x ``width``."""
        s = self.stride
        return -(-(height + self.top + self.bottom) // s), -(-(width + self.left + self.right) // s)

    def size(self, channels: int, height: int, width: int) -> int:
        """Floats stored for an output of ``channels`` x ``height`` x ``width``."""
        h2, w2 = self.phase_size(height, width)
        return channels * self.stride**2 * h2 * w2 + self.slack


def supported(shape: ConvShape) -> bool:
    return shape.dilation == 1 or shape.stride == 1


L1_BUDGET = 16 << 10  # bytes of input a tile may read per block of input channels
MIN_SEGMENT = 32  # nonzeros per (output channel, input block) on average, at least


def channel_blocks(shape: ConvShape, taps: int, lanes: int, rows: int = 1) -> int:
    """How many blocks the input channels of a group are split into (``pack``) for ``taps``
    stored taps of ``rows`` output channels each: a tile reads (RT + KH - 1) rows of its input
    per channel, so with many channels what it reads no longer stays in L1 while every output
    channel passes it; a block of channels does, at the cost of keeping partial sums per block
    (worth it only while each block holds enough taps)."""
    rt, tw = shape.tile(lanes, rows)
    kh, kw = shape.kernel
    per_channel = (rt + kh - 1) * (tw + kw - 1 + 16) * 4  # bytes, with the cache lines' slack
    cg = shape.channels // shape.groups
    by_cache = -(-cg * per_channel // L1_BUDGET)
    by_density = max(1, taps // (MIN_SEGMENT * (shape.out_channels // rows)))
    return max(1, min(by_cache, by_density, cg))


def pack(
    weight: np.ndarray, shape: ConvShape, blocks: int = 1, rows: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight (O x C/groups x KH x KW) stored by blocks of ``rows`` output channels (of one
    group) and block of input channels (``blocks`` per group): each block row keeps the taps
    (input channel, i, j) where any of its output channels has a nonzero — their offsets into
    the prepared input, and ``rows`` values per tap (zeros where an output channel has none) —
    with CSR row pointers over the block rows (row ``o // rows * blocks + b``). ``rows = 1``
    stores exactly the nonzeros."""
    o, cg = weight.shape[:2]
    if (o // shape.groups) % rows:
        raise ValueError(f"{rows} output channels per block do not divide a group's {o // shape.groups}")
    s, d = shape.stride, shape.dilation
    h2, w2 = shape.phase_size
    grouped = weight.reshape(o // rows, rows, *weight.shape[1:])
    ob, c, i, j = np.nonzero((grouped != 0).any(axis=1))  # row-major: by block, then input channel
    channel = ob * rows // (o // shape.groups) * cg + c  # the input channel, across groups
    ri, rj = i * d, j * d  # the tap's position in the padded input
    plane = (channel * s + ri % s) * s + rj % s
    offsets = (plane * h2 + ri // s) * w2 + rj // s
    block_rows = ob * blocks + c // -(-cg // blocks)
    indptr = np.zeros(o // rows * blocks + 1, np.int32)
    indptr[1:] = np.cumsum(np.bincount(block_rows, minlength=o // rows * blocks))
    values = grouped[ob, :, c, i, j].astype(np.float32).reshape(-1)  # tap-major, ``rows`` each
    if not len(values):  # never an empty buffer
        values, offsets = np.zeros(rows, np.float32), np.zeros(1, np.int64)
    return values, offsets.astype(np.int32), indptr


def conv_kernel(
    shape: ConvShape,
    taps: int,
    lanes: int,
    parallel: bool = True,
    epilogue: Epilogue = Epilogue(),
    blocks: int = 1,
    rows: int = 1,
    stored: Stored = Stored(),
) -> Any:
    """The TIR function ``y (O x OH x OW) = epilogue(conv(x'))`` for ``taps`` stored taps (of
    ``rows`` values each) packed by ``pack`` and the prepared input ``x'`` (``prepared_size``
    floats). Its parameters are always ``x', values, offsets, indptr, bias (O), residual
    (O x OH x OW), y``; without a bias or a residual in ``epilogue`` those buffers are one float
    the kernel never reads; ``y`` is flat, laid out as ``stored`` says. Each tap's input vectors
    are loaded once for the ``rows`` output channels of its block. With several input blocks,
    each tile's partial sums wait in a buffer between them."""
    from tvm.script import tirx as T

    o_ch = shape.out_channels
    oh, ow = shape.out_size
    _, w2 = shape.phase_size
    rt, tw = shape.tile(lanes, rows)
    size = shape.prepared_size(lanes)
    row_tiles, col_tiles = -(-oh // rt), -(-ow // tw)
    spatial = row_tiles * col_tiles
    block_rows = o_ch // rows
    groups = -(-16 // spatial) if parallel else 1  # output-channel groups when tiles are few
    per_group = -(-block_rows // groups)
    groups = -(-block_rows // per_group)
    # the last column (row) tile shifts left (up), recomputing a few outputs, instead of
    # overhanging; a tile wider than the output reads past its rows, into zeros at the end
    last_col = max(ow - tw, 0)
    # stored by vectors when every tile lies within the output; a tile wider than the output
    # stores its first ``ow`` columns one by one
    store, columns = (T.vectorized, tw) if tw <= ow else (T.serial, ow)
    loop = T.parallel if parallel else T.serial
    slots = max(taps, 1)
    has_bias, has_residual = epilogue.bias, epilogue.residual
    low, high = epilogue.low, epilogue.high
    bias_shape = (o_ch,) if has_bias else (1,)
    residual_shape = (o_ch, oh, ow) if has_residual else (1,)
    top, left, phases = stored.top, stored.left, stored.stride
    h3, w3 = stored.phase_size(oh, ow)  # a stored (phase) plane
    plane = h3 * w3
    out_size = stored.size(o_ch, oh, ow)
    bordered = out_size != o_ch * oh * ow
    if phases not in (1, 2) or (phases == 2 and (ow % 2 or tw % 2 or tw > ow)):
        raise ValueError(f"cannot store a {oh}x{ow} output in {phases} x {phases} phases")
    # by phases of 2: a tile row's even and odd columns (a tile starts at an even column) go to
    # two phase planes, each half the row; after an odd left padding the even columns are in
    # the odd phase, and the odd ones one column further on in the even phase
    evens, odds = list(range(0, tw, 2)), list(range(1, tw, 2))
    odd_left = left % 2

    @T.prim_func
    def conv(
        x: T.Buffer((size,), "float32"),
        w_values: T.Buffer((slots * rows,), "float32"),
        w_offsets: T.Buffer((slots,), "int32"),
        w_indptr: T.Buffer((block_rows * blocks + 1,), "int32"),
        bias: T.Buffer(bias_shape, "float32"),
        residual: T.Buffer(residual_shape, "float32"),
        y: T.Buffer((out_size,), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for item in loop(spatial * groups):
            acc = T.alloc_buffer((rows, rt, tw), "float32", scope="local")
            out = T.alloc_buffer((rt, tw), "float32", scope="local")
            tile: T.let = item // groups
            oh0: T.let = T.min(tile // col_tiles * rt, oh - rt)
            ow0: T.let = T.min(tile % col_tiles * tw, last_col)
            part = T.alloc_buffer((per_group if blocks > 1 else 1, rows, rt, tw), "float32", scope="local")
            for b in range(blocks):
                for ob in range(T.min(per_group, block_rows - item % groups * per_group)):
                    o0: T.let = (item % groups * per_group + ob) * rows
                    row: T.let = (item % groups * per_group + ob) * blocks + b
                    if b == 0:
                        for k, r, v in T.grid(rows, rt, tw):
                            if has_bias:
                                acc[k, r, v] = bias[o0 + k]
                            else:
                                acc[k, r, v] = T.float32(0)
                    else:
                        for k in T.unroll(rows):
                            for r in T.unroll(rt):
                                for v in T.vectorized(tw):
                                    acc[k, r, v] = part[ob, k, r, v]
                    for q in range(w_indptr[row + 1] - w_indptr[row]):
                        p: T.let = w_indptr[row] + q
                        at: T.let = w_offsets[p] + oh0 * w2 + ow0
                        for r in T.unroll(rt):
                            for k in T.unroll(rows):
                                for v in T.vectorized(tw):
                                    acc[k, r, v] = acc[k, r, v] + w_values[p * rows + k] * x[at + r * w2 + v]
                    if b < blocks - 1:
                        for k in T.unroll(rows):
                            for r in T.unroll(rt):
                                for v in T.vectorized(tw):
                                    part[ob, k, r, v] = acc[k, r, v]
                    else:
                        for k in T.unroll(rows):
                            for r in T.unroll(rt):
                                for v in T.vectorized(tw):
                                    out[r, v] = acc[k, r, v]
                                for v in store(columns):
                                    if has_residual:
                                        out[r, v] = out[r, v] + residual[o0 + k, oh0 + r, ow0 + v]
                                    if low is not None:
                                        out[r, v] = T.max(out[r, v], T.float32(low))
                                    if high is not None:
                                        out[r, v] = T.min(out[r, v], T.float32(high))
                                    if phases == 1:
                                        y[((o0 + k) * h3 + top + oh0 + r) * w3 + left + ow0 + v] = out[r, v]
                                if phases == 2:
                                    at: T.let = top + oh0 + r  # the padded row
                                    base: T.let = (o0 + k) * 4 * plane + at % 2 * 2 * plane + at // 2 * w3
                                    col: T.let = base + (left + ow0) // 2
                                    even_at: T.let = col + odd_left * plane
                                    odd_at: T.let = col + (1 - odd_left) * plane + odd_left
                                    row_out = out[r, T.ramp(0, 1, tw)]
                                    y[T.ramp(even_at, 1, tw // 2)] = T.Shuffle([row_out], evens)
                                    y[T.ramp(odd_at, 1, tw // 2)] = T.Shuffle([row_out], odds)
        if bordered:  # the zeros around each (phase) plane, and after them
            for plane_row in loop(o_ch * phases * h3):  # (channel, row phase, row)
                at: T.let = plane_row % h3 * phases + plane_row // h3 % phases  # the padded row
                for pj in T.unroll(phases):
                    base: T.let = (plane_row // h3 * phases + pj) * plane + plane_row % h3 * w3
                    # the columns of the phase plane that hold outputs
                    lo: T.let = T.max((left - pj + phases - 1) // phases, 0)
                    hi: T.let = T.min((left + ow - pj + phases - 1) // phases, w3)
                    if at < top or at >= top + oh:
                        for col in range(w3):
                            y[base + col] = T.float32(0)
                    else:
                        for col in range(lo):
                            y[base + col] = T.float32(0)
                        for col in range(w3 - hi):
                            y[base + hi + col] = T.float32(0)
            for col in range(out_size - o_ch * phases**2 * plane):
                y[o_ch * phases**2 * plane + col] = T.float32(0)

    return conv


def prepare_kernel(shape: ConvShape, lanes: int) -> Any:
    """The TIR function preparing the input of ``conv_kernel`` from ``x`` (1 x C x H x W): padded,
    split into the stride's ``s x s`` phases (C x s x s x H2 x W2), flat, a tile row of zeros
    after it. Each input row fills the ``s`` phase rows that take its columns in one pass, in
    parallel over the rows: the columns every phase row copies without a test (loads LLVM
    vectorises, de-interleaving the phases), the few at the edges each tested."""
    from tvm.script import tirx as T

    c, h, w, s = shape.channels, shape.height, shape.width, shape.stride
    top, left = shape.padding[:2]
    h2, w2 = shape.phase_size
    rows = c * s * h2  # (channel, row phase, phase row): s phase rows each
    size = shape.prepared_size(lanes)
    # the columns of a phase row that copy an input column, for every column phase
    lo = max(min(max(-(-(left - pj) // s), 0), w2) for pj in range(s))
    hi = max(lo, min(min(-(-(w + left - pj) // s), w2) for pj in range(s)))

    @T.prim_func(check_well_formed=False)  # a root block around loops that are not blocks
    def prepare_conv_input(x: T.Buffer((1, c, h, w), "float32"), out: T.Buffer((size,), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax inspects a one-input function for a reshape in its root block
            for row in T.parallel(rows):
                ch: T.let = row // (s * h2)
                pi: T.let = row // h2 % s
                i: T.let = row % h2
                src: T.let = i * s + pi - top  # the input row it holds
                base: T.let = ((ch * s + pi) * s * h2 + i) * w2  # phase row (ch, pi, 0, i)
                if src >= 0 and src < h:
                    for col in range(lo):
                        for pj in T.unroll(s):
                            at: T.let = col * s + pj - left
                            out[base + pj * h2 * w2 + col] = T.if_then_else(
                                at >= 0 and at < w, x[0, ch, src, T.max(T.min(at, w - 1), 0)], T.float32(0)
                            )
                    for col in range(hi - lo):
                        for pj in T.unroll(s):
                            out[base + pj * h2 * w2 + lo + col] = x[0, ch, src, (lo + col) * s + pj - left]
                    for col in range(w2 - hi):
                        for pj in T.unroll(s):
                            at: T.let = (hi + col) * s + pj - left
                            out[base + pj * h2 * w2 + hi + col] = T.if_then_else(
                                at >= 0 and at < w, x[0, ch, src, T.max(T.min(at, w - 1), 0)], T.float32(0)
                            )
                else:
                    for pj, col in T.grid(s, w2):
                        out[base + pj * h2 * w2 + col] = T.float32(0)
            for col in range(size - c * s * s * h2 * w2):
                out[c * s * s * h2 * w2 + col] = T.float32(0)

    return prepare_conv_input
