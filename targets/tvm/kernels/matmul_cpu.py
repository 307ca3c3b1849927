"""CPU matmul kernels in TIR for ``y = x @ W.T`` with a constant weight ``W`` (N x K).

TVM 0.27 has no sparse operators, so these are ours. One block-sparse kernel covers CSR (1x1
blocks) and BSR (RxC blocks); one dense kernel is the baseline it has to beat. Both are
written as explicit TVMScript loops: parallel over (block) rows, vectorised over the target's
vector lanes, with ``unroll`` independent accumulators per row — at batch 1 a single
accumulator's add chain, not memory bandwidth, is what limits a naive sparse loop. The weight's
layout is ``formats``'s.
"""

from __future__ import annotations

from targets.tvm.kernels.formats import GEMM_PANEL, Packed, sparse_layout

CHUNKS = 64
"""Parallel work items of the sparse kernel: accumulators are allocated once per item, not per
row (TVM allocates a buffer declared inside a parallel loop through the runtime, per iteration)."""


def _chunks(rows: int, parallel: bool) -> tuple[int, int]:
    """Rows per work item and the number of items (none of them empty)."""
    per = -(-rows // min(rows, CHUNKS)) if parallel and rows else max(rows, 1)
    return per, max(1, -(-rows // per))


def kernel(packed: Packed, batch: int, lanes: int = 8):
    """The TIR function computing ``y (batch x N) = x (batch x K) @ W.T`` for ``packed``.

    ``lanes`` is the target's fp32 vector width (8 for AVX2, 16 for AVX-512, 4 for NEON).
    """
    if packed.format.kind == "dense":
        return _dense_kernel(packed, batch, lanes)
    if packed.format.kind == "gemm":
        from targets.tvm.kernels.gemm_cpu import gemm_kernel

        n, k = packed.shape
        return gemm_kernel(
            1,
            batch,
            k,
            n,
            lanes,
            vectors=GEMM_PANEL // lanes,
            packed_b=True,
            flat=True,
            parallel=packed.format.parallel,
        )
    if packed.format.batch_inner:
        return _bsr_batch_inner_kernel(packed, batch, lanes)
    return _bsr_kernel(packed, batch)


def _bsr_kernel(packed: Packed, batch: int):
    from tvm.script import tirx as T

    n, k, r, c, u, nr, slots, vdt, idt = sparse_layout(packed)
    # Vectorise the innermost loop that is contiguous in memory: block columns, else block rows
    # (x broadcast), else the unrolled blocks of a CSR row (x gathered).
    loop_u = T.vectorized if (r, c) == (1, 1) else T.unroll
    loop_r = T.vectorized if c == 1 and r > 1 else T.unroll
    loop_c = T.vectorized if c > 1 else T.serial
    rows = T.parallel if packed.format.parallel else T.serial
    per_chunk, chunks = _chunks(nr, packed.format.parallel)

    @T.prim_func
    def bsr_matmul(
        x: T.Buffer((batch, k), "float32"),
        w_values: T.Buffer((slots, r, c), vdt),
        w_indices: T.Buffer((slots,), idt),
        w_indptr: T.Buffer((nr + 1,), "int32"),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for chunk in rows(chunks):
            acc = T.alloc_buffer((u, r, c), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for row in range(T.min(per_chunk, nr - chunk * per_chunk)):
                br: T.let = chunk * per_chunk + row
                for b in range(batch):
                    for i0, i1, i2 in T.grid(u, r, c):
                        acc[i0, i1, i2] = T.float32(0)
                    for q in range(w_indptr[br + 1] - w_indptr[br]):
                        p: T.let = w_indptr[br] + q
                        for j in loop_u(u):
                            for ir in loop_r(r):
                                for ic in loop_c(c):
                                    acc[j, ir, ic] = (
                                        acc[j, ir, ic]
                                        + T.Cast("float32", w_values[p * u + j, ir, ic])
                                        * x[b, T.Cast("int32", w_indices[p * u + j]) + ic]
                                    )
                    for ir in range(r):
                        if br * r + ir < n:
                            total[0] = T.float32(0)
                            for j, ic in T.grid(u, c):
                                total[0] = total[0] + acc[j, ir, ic]
                            y[b, br * r + ir] = total[0]

    return bsr_matmul


def _bsr_batch_inner_kernel(packed: Packed, batch: int, lanes: int):
    """Block-sparse for batch > 1: each stored value multiplies a panel of ``2 * lanes``
    consecutive batch rows held in vector registers (``unroll`` x R accumulators of a panel).

    Work items are panels (split into ranges of block rows only when there are fewer panels than
    ``PANEL_ITEMS``). An item first copies its rows of ``x`` transposed (K x panel, zeros past
    the batch), which then stays in L1/L2 while the weight's rows pass it; its outputs are
    collected per ``TILE`` rows and stored to ``y`` transposed, a contiguous run per batch row
    (a store per value into rows of ``y`` far apart would miss the cache each time).
    """
    from tvm.script import tirx as T

    n, k, r, c, u, nr, slots, vdt, idt = sparse_layout(packed)
    panel = lanes if batch <= lanes else VEC * lanes
    panels = -(-batch // panel)
    loop = T.parallel if packed.format.parallel else T.serial
    chunks = -(-PANEL_ITEMS // panels) if packed.format.parallel else 1
    per_chunk = -(-nr // chunks)
    chunks = -(-nr // per_chunk)
    tiles = -(-per_chunk // TILE)

    @T.prim_func
    def bsr_matmul_batch_inner(
        x: T.Buffer((batch, k), "float32"),
        w_values: T.Buffer((slots, r, c), vdt),
        w_indices: T.Buffer((slots,), idt),
        w_indptr: T.Buffer((nr + 1,), "int32"),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for item in loop(panels * chunks):
            xt = T.alloc_buffer((k, panel), "float32")
            tile = T.alloc_buffer((TILE, r, panel), "float32")
            acc = T.alloc_buffer((u, r, panel), "float32", scope="local")
            b0: T.let = item // chunks * panel
            first: T.let = item % chunks * per_chunk
            for col, v in T.grid(k, panel):
                xt[col, v] = T.if_then_else(b0 + v < batch, x[T.min(b0 + v, batch - 1), col], T.float32(0))
            for t in range(T.min(tiles, T.ceildiv(T.min(per_chunk, nr - first), TILE))):
                for row in range(T.min(TILE, T.min(per_chunk, nr - first) - t * TILE)):
                    br: T.let = first + t * TILE + row
                    for i0, i1, i2 in T.grid(u, r, panel):
                        acc[i0, i1, i2] = T.float32(0)
                    for q in range(w_indptr[br + 1] - w_indptr[br]):
                        p: T.let = w_indptr[br] + q
                        for j in T.unroll(u):
                            for ir in T.unroll(r):
                                for ic in T.unroll(c):
                                    for v in T.vectorized(panel):
                                        acc[j, ir, v] = (
                                            acc[j, ir, v]
                                            + T.Cast("float32", w_values[p * u + j, ir, ic])
                                            * xt[T.Cast("int32", w_indices[p * u + j]) + ic, v]
                                        )
                    # constant indices only: ``acc`` stays in registers
                    for ir in T.unroll(r):
                        for v in T.vectorized(panel):
                            tile[row, ir, v] = acc[0, ir, v]
                        for j in T.unroll(1, u):
                            for v in T.vectorized(panel):
                                tile[row, ir, v] = tile[row, ir, v] + acc[j, ir, v]
                for v in range(T.min(panel, batch - b0)):
                    for row in range(T.min(TILE, T.min(per_chunk, nr - first) - t * TILE)):
                        for ir in range(r):
                            if (first + t * TILE + row) * r + ir < n:
                                y[b0 + v, (first + t * TILE + row) * r + ir] = tile[row, ir, v]

    return bsr_matmul_batch_inner


PANEL_ITEMS = 8
VEC = 2
TILE = 64  # block rows whose outputs are stored together


def _dense_kernel(packed: Packed, batch: int, lanes: int):
    from tvm.script import tirx as T

    n, k = packed.shape
    vdt = str(packed.arrays[0].dtype)
    width = lanes * packed.format.unroll  # values summed in parallel per row
    main = k // width * width
    bb = packed.format.batch_block if batch % packed.format.batch_block == 0 else 1
    rows = T.parallel if packed.format.parallel else T.serial
    per_chunk, chunks = _chunks(n, packed.format.parallel)

    @T.prim_func
    def dense_matmul(
        x: T.Buffer((batch, k), "float32"),
        w: T.Buffer((n, k), vdt),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for chunk in rows(chunks):
            acc = T.alloc_buffer((bb, width), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for row in range(T.min(per_chunk, n - chunk * per_chunk)):
                i: T.let = chunk * per_chunk + row
                for b0 in range(batch // bb):
                    for b1, v in T.grid(bb, width):
                        acc[b1, v] = T.float32(0)
                    for p in range(k // width):
                        for b1 in T.unroll(bb):
                            for v in T.vectorized(width):
                                acc[b1, v] = (
                                    acc[b1, v]
                                    + T.Cast("float32", w[i, p * width + v]) * x[b0 * bb + b1, p * width + v]
                                )
                    for b1 in range(bb):
                        total[0] = T.float32(0)
                        for v in range(width):
                            total[0] = total[0] + acc[b1, v]
                        for t in range(k - main):
                            total[0] = (
                                total[0] + T.Cast("float32", w[i, main + t]) * x[b0 * bb + b1, main + t]
                            )
                        y[b0 * bb + b1, i] = total[0]

    return dense_matmul
