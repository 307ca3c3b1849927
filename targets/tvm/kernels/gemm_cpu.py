"""The CPU GEMM ``y[g] = a[g] @ b[g]`` (``a``: g x M x K, ``b``: g x K x N), for the matmuls whose
operands are both activations — attention's ``Q @ K^T`` and ``P @ V`` per head — and for the
constant-weight matmuls at batch > 1 (``b`` is then the weight, transposed once when packed).

A register-blocked micro-kernel: ``rows`` rows of ``a`` times a panel of ``panel`` columns of
``b`` are accumulated in registers over the whole K (``rows`` x ``panel / lanes`` vector
accumulators, a broadcast of ``a`` and one load of ``b`` per vector and K step), the panels
outermost so that one panel of ``b`` stays in the L1/L2 cache while every row block passes it.
The last row block reads a clamped row and stores only the rows that exist; the columns past the
last full panel go through one panel-wide tail that reads clamped columns. Work items (panel,
row block) run in parallel in ``CHUNKS`` contiguous ranges, so threads share panels.
"""

from __future__ import annotations

from typing import Any

from targets.tvm.kernels.matmul_cpu import CHUNKS


def gemm_kernel(
    g: int,
    m: int,
    k: int,
    n: int,
    lanes: int,
    rows: int = 4,
    vectors: int = 2,
    flat: bool = False,
    parallel: bool = True,
) -> Any:
    """The TIR function of ``y (g x M x N) = a (g x M x K) @ b (g x K x N)`` in fp32; ``flat``
    (g = 1): its arguments are the 2-D matrices."""
    from tvm.script import tirx as T

    panel = lanes * vectors
    panels, tail = divmod(n, panel)
    blocks = -(-m // rows)
    items = g * panels * blocks
    per = max(1, -(-items // CHUNKS))
    chunks = max(1, -(-items // per))
    if flat and g != 1:
        raise ValueError(f"a flat GEMM has one matrix product, not {g}")

    def shape(*dims: int) -> tuple[int, ...]:
        return dims[1:] if flat else dims

    tail_items = g * blocks if tail else 0
    main_loop = T.parallel if items and parallel else T.serial  # no work: no waking the pool
    tail_loop = T.parallel if tail_items and parallel else T.serial
    per_g = max(1, panels * blocks)

    @T.prim_func
    def gemm(
        a_in: T.Buffer(shape(g, m, k), "float32"),
        b_in: T.Buffer(shape(g, k, n), "float32"),
        y_out: T.Buffer(shape(g, m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        a = T.decl_buffer((g, m, k), "float32", data=a_in.data)
        b = T.decl_buffer((g, k, n), "float32", data=b_in.data)
        y = T.decl_buffer((g, m, n), "float32", data=y_out.data)
        for chunk in main_loop(chunks):
            acc = T.alloc_buffer((rows, panel), "float32", scope="local")
            for t in range(T.min(per, items - chunk * per)):
                item: T.let = chunk * per + t
                gi: T.let = item // per_g
                j0: T.let = item % per_g // blocks * panel
                i0: T.let = item % blocks * rows
                for r, v in T.grid(rows, panel):
                    acc[r, v] = T.float32(0)
                for p in range(k):
                    for r in T.unroll(rows):
                        for v in T.vectorized(panel):
                            acc[r, v] = acc[r, v] + a[gi, T.min(i0 + r, m - 1), p] * b[gi, p, j0 + v]
                for r in T.unroll(rows):
                    if i0 + r < m:
                        for v in T.vectorized(panel):
                            y[gi, i0 + r, j0 + v] = acc[r, v]
        for item in tail_loop(tail_items):
            acc = T.alloc_buffer((rows, panel), "float32", scope="local")
            gi: T.let = item // blocks
            i0: T.let = item % blocks * rows
            for r, v in T.grid(rows, panel):
                acc[r, v] = T.float32(0)
            for p in range(k):
                for r in T.unroll(rows):
                    for v in T.vectorized(panel):
                        acc[r, v] = (
                            acc[r, v]
                            + a[gi, T.min(i0 + r, m - 1), p] * b[gi, p, T.min(panels * panel + v, n - 1)]
                        )
            for r in range(rows):
                if i0 + r < m:
                    for v in range(tail):
                        y[gi, i0 + r, panels * panel + v] = acc[r, v]

    return gemm
