"""The CPU GEMM ``y[g] = a[g] @ b[g]`` (``a``: g x M x K, ``b``: g x K x N), for the matmuls whose
operands are both activations — attention's ``Q @ K^T`` and ``P @ V`` per head — and for the
constant-weight matmuls at batch > 1 (``b`` is then the weight, transposed once when packed).

A register-blocked micro-kernel: ``rows`` rows of ``a`` times a panel of ``panel`` columns of
``b`` are accumulated in registers over a block of ``kc`` rows of ``b`` (``rows`` x ``panel /
lanes`` vector accumulators, a broadcast of ``a`` and one load of ``b`` per vector and K step),
then added to ``y``. A work item is a panel (or a range of its row blocks, where panels are
few); within it the K blocks are outermost, so one block of the panel (16 KB at ``kc`` 256)
stays in L1 while every row block passes it. A constant weight is stored by panels, each
contiguous (read in place, a panel's rows lie a row of ``b`` apart: 12 KB at N = 3072);
``benchmarks/gemm.py`` measured the kernel without K blocks or panels at 0.57x and 0.38x of
this on 128 x 768 x 3072 and 128 x 3072 x 768 (2 threads, side by side). The last row block
reads a clamped row and stores only the rows that exist; the columns past the last full panel
go through the same code as one more panel that reads clamped columns (or the zeros a packed
panel has) and stores the columns that exist.
Work items run in parallel in ``CHUNKS`` contiguous ranges.
"""

from __future__ import annotations

from typing import Any

from targets.tvm.kernels.matmul_cpu import CHUNKS

ITEMS = 16  # work items at least, where the panels are fewer: ranges of row blocks


def gemm_kernel(
    g: int,
    m: int,
    k: int,
    n: int,
    lanes: int,
    rows: int = 4,
    vectors: int = 2,
    kc: int = 256,
    packed_b: bool = False,
    flat: bool = False,
    parallel: bool = True,
) -> Any:
    """The TIR function of ``y (g x M x N) = a (g x M x K) @ b (g x K x N)`` in fp32; ``flat``
    (g = 1): its arguments are the 2-D matrices; ``packed_b``: ``b`` by panels
    (``formats.panels``), a weight's layout; ``kc``: the rows of ``b`` per K block."""
    from tvm.script import tirx as T

    panel = lanes * vectors
    panels, tail = divmod(n, panel)
    blocks = -(-m // rows)
    kc = min(k, kc)
    kblocks = -(-k // kc)
    parts = max(1, min(blocks, -(-ITEMS // max(1, g * panels))))  # row ranges per panel
    span = -(-blocks // parts)
    parts = -(-blocks // span)
    items = g * panels * parts
    per = max(1, -(-items // CHUNKS))
    chunks = max(1, -(-items // per))
    if flat and g != 1:
        raise ValueError(f"a flat GEMM has one matrix product, not {g}")

    def shape(*dims: int) -> tuple[int, ...]:
        return dims[1:] if flat else dims

    tail_items = g * parts if tail else 0
    main_loop = T.parallel if items and parallel else T.serial  # no work: no waking the pool
    tail_loop = T.parallel if tail_items and parallel else T.serial
    per_g = max(1, panels * parts)

    # b by panels (``formats.panels``: K x panel each, the last one padded with zeros), or as it is
    b_shape = (g, -(-n // panel), k, panel) if packed_b else (g, k, n)

    @T.macro
    def panel_rows(a, b, bp, y, gi, j0, first, edge):
        """Row blocks ``first`` to ``first + span`` (those that exist) times the panel at column
        ``j0``, K block by K block; ``edge``: the panel past the last full one, its columns of
        ``b`` and ``y`` clamped to the last (a packed panel holds zeros there) and only the
        ``tail`` that exist stored."""
        acc = T.alloc_buffer((rows, panel), "float32", scope="local")
        for kb in range(kblocks):
            for blk in range(T.min(span, blocks - first)):
                i0: T.let = (first + blk) * rows
                for r in T.unroll(rows):
                    i: T.let = T.min(i0 + r, m - 1)
                    for v in T.vectorized(panel):
                        if edge:
                            acc[r, v] = T.if_then_else(kb == 0, T.float32(0), y[gi, i, T.min(j0 + v, n - 1)])
                        else:
                            acc[r, v] = T.if_then_else(kb == 0, T.float32(0), y[gi, i, j0 + v])
                for p0 in range(T.min(kc, k - kb * kc)):
                    p: T.let = kb * kc + p0
                    for r in T.unroll(rows):
                        i: T.let = T.min(i0 + r, m - 1)
                        for v in T.vectorized(panel):
                            if packed_b:
                                acc[r, v] = acc[r, v] + a[gi, i, p] * bp[gi, j0 // panel, p, v]
                            elif edge:
                                acc[r, v] = acc[r, v] + a[gi, i, p] * b[gi, p, T.min(j0 + v, n - 1)]
                            else:
                                acc[r, v] = acc[r, v] + a[gi, i, p] * b[gi, p, j0 + v]
                for r in T.unroll(rows):
                    if i0 + r < m:
                        if edge:
                            for v in range(tail):
                                y[gi, i0 + r, j0 + v] = acc[r, v]
                        else:
                            for v in T.vectorized(panel):
                                y[gi, i0 + r, j0 + v] = acc[r, v]

    @T.prim_func
    def gemm(
        a_in: T.Buffer(shape(g, m, k), "float32"),
        b_in: T.Buffer(b_shape[1:] if flat else b_shape, "float32"),
        y_out: T.Buffer(shape(g, m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        a = T.decl_buffer((g, m, k), "float32", data=a_in.data)
        b = T.decl_buffer((g, k, n), "float32", data=b_in.data)
        bp = T.decl_buffer((g, -(-n // panel), k, panel), "float32", data=b_in.data)
        y = T.decl_buffer((g, m, n), "float32", data=y_out.data)
        for chunk in main_loop(chunks):
            for t in range(T.min(per, items - chunk * per)):
                item: T.let = chunk * per + t
                j0: T.let = item % per_g // parts * panel
                panel_rows(a, b, bp, y, item // per_g, j0, item % parts * span, False)
        for item in tail_loop(tail_items):
            panel_rows(a, b, bp, y, item // parts, panels * panel, item % parts * span, True)

    return gemm
