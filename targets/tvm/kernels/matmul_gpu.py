"""The CUDA matmul kernel in TIR for ``y = x @ W.T`` with a constant sparse weight (``formats``'s
layout); the dense matmul on a GPU is TVM's own schedule (``targets.tvm.gpu``)."""

from __future__ import annotations

from targets.tvm.kernels.formats import Packed, sparse_layout

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

    n, k, r, c, u, nr, slots, vdt, idt = sparse_layout(packed)
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
            start: T.let = w_indptr[row]
            count: T.let = w_indptr[row + 1] - start
            for t in range((count + lanes - 1 - lane) // lanes):
                chunk: T.let = start + lane + t * lanes
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
