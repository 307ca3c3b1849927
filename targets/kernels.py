"""Matrix kernels in TIR for ``y = x @ W.T`` with a constant weight ``W`` (N x K), and their formats.

TVM 0.27 has no sparse operators, so these are ours. One block-sparse kernel covers CSR (1x1
blocks) and BSR (RxC blocks); one dense kernel is the baseline it has to beat. Both are
written as explicit TVMScript loops: parallel over (block) rows, vectorised over the target's
vector lanes, with ``unroll`` independent accumulators per row — at batch 1 a single
accumulator's add chain, not memory bandwidth, is what limits a naive sparse loop.

Packed layout ("chunked BSR"): each block row stores its nonzero blocks padded to a multiple of
``unroll`` (zero blocks pointing at column 0), so the kernel has no remainder loop; ``indptr``
counts chunks. A block's index is its first column, and a last block that would run past K is
shifted left with the columns it repeats zeroed, so any K >= C works. Column indices are
uint16 when K <= 65535 (6 bytes per fp32 nonzero instead of 8), values fp32 or fp16 (accumulated
in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    """How a weight is stored and multiplied. ``kind`` is ``dense`` or ``bsr`` (``csr`` = 1x1 blocks)."""

    kind: str
    block: tuple[int, int] = (1, 1)
    unroll: int = 8
    dtype: str = "float32"
    batch_block: int = 1
    parallel: bool = True
    batch_inner: bool = False  # sparse, batch > 1: loop over the batch innermost (x transposed)
    threads: int = 0  # GPU formats: lanes per (block) row (``gpu_kernel``); 0 for the CPU kernels

    @property
    def name(self) -> str:
        r, c = self.block
        base = "dense" if self.kind == "dense" else "csr" if (r, c) == (1, 1) else f"bsr{r}x{c}"
        suffix = f"-u{self.unroll}" + (f"-b{self.batch_block}" if self.batch_block > 1 else "")
        suffix += "-bt" if self.batch_inner else ""
        suffix += f"-t{self.threads}" if self.threads else ""
        suffix += ("-fp16" if self.dtype == "float16" else "") + ("" if self.parallel else "-serial")
        return base + suffix

    @property
    def sparse(self) -> bool:
        return self.kind != "dense"


@dataclass
class Packed:
    """A weight in a format: the arrays the kernel takes after ``x``, in order."""

    format: Format
    shape: tuple[int, int]
    arrays: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def index_dtype(k: int) -> str:
    return "uint16" if k <= 65535 else "int32"


def block_fill(weight: np.ndarray, block: tuple[int, int]) -> float:
    """Nonzeros of ``weight`` / values stored by ``block``-sparse storage (1.0 = no explicit zeros)."""
    nnz = int(np.count_nonzero(weight))
    if nnz == 0:
        return 1.0
    return nnz / (_block_mask(weight, block).sum() * block[0] * block[1])


def _blocks(weight: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (NR, Q, R, C) blocks of ``weight`` and each block's first column (Q,)."""
    n, k = weight.shape
    r, c = block
    if k < c:
        raise ValueError(f"a {r}x{c} block needs at least {c} columns, the weight has {k}")
    nr, q = -(-n // r), -(-k // c)
    padded = np.zeros((nr * r, q * c), weight.dtype)
    padded[:n, :k] = weight
    blocks = padded.reshape(nr, r, q, c).transpose(0, 2, 1, 3).copy()
    starts = np.arange(q) * c
    if k % c:  # shift the last block left so it ends at column k; zero the columns it repeats
        last = k - c
        repeat = starts[-1] - last
        blocks[:, -1] = 0
        blocks[:, -1, :, repeat:] = padded[:, starts[-1] : k].reshape(nr, r, c - repeat)
        starts[-1] = last
    return blocks, starts


def _block_mask(weight: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    blocks, _ = _blocks(weight, block)
    return np.any(blocks != 0, axis=(2, 3))


def pack(weight: np.ndarray, fmt: Format) -> Packed:
    """Store ``weight`` (N x K, float32) in ``fmt``."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if fmt.kind == "dense":
        return Packed(fmt, weight.shape, [weight.astype(fmt.dtype)])
    r, c = fmt.block
    u = fmt.unroll
    blocks, starts = _blocks(weight, fmt.block)
    nr = blocks.shape[0]
    mask = np.any(blocks != 0, axis=(2, 3))
    counts = mask.sum(axis=1)
    chunks = -(-counts // u)
    indptr = np.zeros(nr + 1, np.int32)
    indptr[1:] = np.cumsum(chunks)
    slots = max(int(indptr[-1]) * u, u)  # never an empty buffer
    rows, cols = np.nonzero(mask)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    slot = indptr[rows] * u + rank
    values = np.zeros((slots, r, c), fmt.dtype)
    values[slot] = blocks[rows, cols]
    indices = np.zeros(slots, index_dtype(weight.shape[1]))
    indices[slot] = starts[cols]
    return Packed(fmt, weight.shape, [values, indices, indptr])


def unpack(packed: Packed) -> np.ndarray:
    """The dense float32 weight a packed one multiplies by (for tests)."""
    n, k = packed.shape
    if packed.format.kind == "dense":
        return packed.arrays[0].astype(np.float32)
    values, indices, indptr = packed.arrays
    r, c = packed.format.block
    used = int(indptr[-1]) * packed.format.unroll
    block_rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr) * packed.format.unroll)
    rows = block_rows[:, None, None] * r + np.arange(r)[None, :, None]
    cols = indices[:used].astype(np.int64)[:, None, None] + np.arange(c)[None, None, :]
    out = np.zeros((-(-n // r) * r, k), np.float32)
    np.add.at(out, (rows, cols), values[:used].astype(np.float32))
    return out[:n]


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
    if packed.format.batch_inner:
        return _bsr_batch_inner_kernel(packed, batch)
    return _bsr_kernel(packed, batch)


def _sparse_layout(packed: Packed) -> tuple[int, int, int, int, int, int, int, str, str]:
    """The sizes and dtypes a block-sparse kernel is specialised on: N, K, the block's R and C,
    the unroll, block rows, stored blocks (slots), and the value and index dtypes."""
    n, k = packed.shape
    values, indices, indptr = packed.arrays
    r, c = packed.format.block
    nr, slots = len(indptr) - 1, values.shape[0]
    return n, k, r, c, packed.format.unroll, nr, slots, str(values.dtype), str(indices.dtype)


def _bsr_kernel(packed: Packed, batch: int):
    from tvm.script import tirx as T

    n, k, r, c, u, nr, slots, vdt, idt = _sparse_layout(packed)
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
                br = chunk * per_chunk + row
                for b in range(batch):
                    for i0, i1, i2 in T.grid(u, r, c):
                        acc[i0, i1, i2] = T.float32(0)
                    for q in range(w_indptr[br + 1] - w_indptr[br]):
                        p = w_indptr[br] + q
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


def _bsr_batch_inner_kernel(packed: Packed, batch: int):
    """Block-sparse for batch > 1: x is transposed once, then each stored value multiplies a
    contiguous vector of the batch's activations (no gathers per batch row)."""
    from tvm.script import tirx as T

    n, k, r, c, u, nr, slots, vdt, idt = _sparse_layout(packed)
    rows = T.parallel if packed.format.parallel else T.serial
    per_chunk, chunks = _chunks(nr, packed.format.parallel)

    @T.prim_func
    def bsr_matmul_batch_inner(
        x: T.Buffer((batch, k), "float32"),
        w_values: T.Buffer((slots, r, c), vdt),
        w_indices: T.Buffer((slots,), idt),
        w_indptr: T.Buffer((nr + 1,), "int32"),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        xt = T.alloc_buffer((k, batch), "float32")
        for col in range(k):
            for b in range(batch):
                xt[col, b] = x[b, col]
        for chunk in rows(chunks):
            acc = T.alloc_buffer((u, r, batch), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for row in range(T.min(per_chunk, nr - chunk * per_chunk)):
                br = chunk * per_chunk + row
                for i0, i1, i2 in T.grid(u, r, batch):
                    acc[i0, i1, i2] = T.float32(0)
                for q in range(w_indptr[br + 1] - w_indptr[br]):
                    p = w_indptr[br] + q
                    for j in T.unroll(u):
                        for ir in T.unroll(r):
                            for ic in T.unroll(c):
                                for b in T.vectorized(batch):
                                    acc[j, ir, b] = (
                                        acc[j, ir, b]
                                        + T.Cast("float32", w_values[p * u + j, ir, ic])
                                        * xt[T.Cast("int32", w_indices[p * u + j]) + ic, b]
                                    )
                for ir in range(r):
                    if br * r + ir < n:
                        for b in range(batch):
                            total[0] = T.float32(0)
                            for j in range(u):
                                total[0] = total[0] + acc[j, ir, b]
                            y[b, br * r + ir] = total[0]

    return bsr_matmul_batch_inner


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
                i = chunk * per_chunk + row
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


WARP = 32
BLOCK_THREADS = 128  # threads per thread block: BLOCK_THREADS // threads rows each


def gpu_kernel(packed: Packed, batch: int, threads: bool = True):
    """The CUDA form of the block-sparse kernel ("CSR-vector"): ``format.threads`` lanes (4 to 32,
    a warp or a sub-warp) per block row stride over the row's chunks of ``format.unroll`` blocks,
    each chunk read with vector loads (``ushort4`` indices, ``float4`` values); the lanes' sums
    are then reduced with warp shuffles. ``BLOCK_THREADS // format.threads`` rows per thread
    block. At batch > 1 either one grid row per batch row (the weight is read ``batch`` times,
    from L2 after the first), or with ``format.batch_inner`` each lane keeps ``batch``
    accumulators and the weight is read once (SpMM). Values fp32 or fp16, accumulated in fp32.

    With ``threads=False`` the thread loops are serial and the shuffles become the same tree of
    adds over a buffer, so the TIR runs on a CPU: tests check its arithmetic there against numpy.
    """
    from tvm.script import tirx as T

    n, k, r, c, u, nr, slots, vdt, idt = _sparse_layout(packed)
    lanes = packed.format.threads or WARP
    if lanes & (lanes - 1) or not 1 <= lanes <= WARP:
        raise ValueError(f"threads per row must be a power of two up to {WARP}, not {lanes}")
    rows = BLOCK_THREADS // lanes
    grid = -(-nr // rows)
    bt = batch if packed.format.batch_inner else 1  # batch rows per lane
    gy = batch // bt
    steps = lanes.bit_length() - 1  # shuffle-down offsets lanes/2, ..., 1
    per = u * r * c  # values per chunk, contiguous
    itemsize = 2 if vdt == "float16" else 4
    vec = per & -per  # the largest power of two dividing it, up to 16 bytes
    while vec * itemsize > 16:
        vec //= 2
    ivec = u if u * (2 if idt == "uint16" else 4) <= 16 else 1

    @T.macro
    def accumulate(acc, x, w_values, w_indices, w_indptr, row, lane, by):
        vals = T.alloc_buffer((per,), vdt, scope="local")
        idx = T.alloc_buffer((u,), idt, scope="local")
        for bb, ir in T.grid(bt, r):
            acc[bb, ir] = T.float32(0)
        if row < nr:
            start = w_indptr[row]
            count = w_indptr[row + 1] - start
            for t in range((count + lanes - 1 - lane) // lanes):
                chunk = start + lane + t * lanes
                for j0 in range(u // ivec):
                    for j1 in T.vectorized(ivec):
                        idx[j0 * ivec + j1] = w_indices[chunk * u + j0 * ivec + j1]
                for e0 in range(per // vec):
                    for e1 in T.vectorized(vec):  # no assignments in here: they would not vectorise
                        vals[e0 * vec + e1] = w_values[
                            chunk * u + (e0 * vec + e1) // (r * c),
                            (e0 * vec + e1) // c % r,
                            (e0 * vec + e1) % c,
                        ]
                for j, bb, ir, ic in T.grid(u, bt, r, c):
                    acc[bb, ir] = (
                        acc[bb, ir]
                        + T.Cast("float32", vals[(j * r + ir) * c + ic])
                        * x[by * bt + bb, T.Cast("int32", idx[j]) + ic]
                    )

    @T.macro
    def store(y, total, row, by, bb, ir):
        if row * r + ir < n:
            y[by * bt + bb, row * r + ir] = total

    @T.prim_func
    def bsr_matmul_cuda(
        x: T.Buffer((batch, k), "float32"),
        w_values: T.Buffer((slots, r, c), vdt),
        w_indices: T.Buffer((slots,), idt),
        w_indptr: T.Buffer((nr + 1,), "int32"),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for by in T.thread_binding(gy, "blockIdx.y"):
            for g in T.thread_binding(grid, "blockIdx.x"):
                for w in T.thread_binding(rows, "threadIdx.y"):
                    for lane in T.thread_binding(lanes, "threadIdx.x"):
                        acc = T.alloc_buffer((bt, r), "float32", scope="local")
                        accumulate(acc, x, w_values, w_indices, w_indptr, g * rows + w, lane, by)
                        for bb, ir in T.grid(bt, r):
                            for s in range(steps):
                                acc[bb, ir] = acc[bb, ir] + T.tvm_warp_shuffle_down(
                                    T.uint32(0xFFFFFFFF), acc[bb, ir], lanes >> (s + 1), lanes, WARP
                                )
                        if lane == 0:
                            for bb, ir in T.grid(bt, r):
                                store(y, acc[bb, ir], g * rows + w, by, bb, ir)

    @T.prim_func
    def bsr_matmul_cuda_serial(
        x: T.Buffer((batch, k), "float32"),
        w_values: T.Buffer((slots, r, c), vdt),
        w_indices: T.Buffer((slots,), idt),
        w_indptr: T.Buffer((nr + 1,), "int32"),
        y: T.Buffer((batch, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for by, g, w in T.grid(gy, grid, rows):
            partial = T.alloc_buffer((lanes, bt, r), "float32")
            for lane in range(lanes):
                acc = T.alloc_buffer((bt, r), "float32")
                accumulate(acc, x, w_values, w_indices, w_indptr, g * rows + w, lane, by)
                for bb, ir in T.grid(bt, r):
                    partial[lane, bb, ir] = acc[bb, ir]
            for s, lane, bb, ir in T.grid(steps, lanes, bt, r):  # shfl_down, lanes in order
                if lane + (lanes >> (s + 1)) < lanes:
                    partial[lane, bb, ir] = partial[lane, bb, ir] + partial[lane + (lanes >> (s + 1)), bb, ir]
            for bb, ir in T.grid(bt, r):
                store(y, partial[0, bb, ir], g * rows + w, by, bb, ir)

    return bsr_matmul_cuda if threads else bsr_matmul_cuda_serial
