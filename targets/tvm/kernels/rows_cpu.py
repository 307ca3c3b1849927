"""Row-wise ops over the last axis on a CPU, each row (an attention score row, a token's
features: a few hundred floats that stay in L1) in a few passes of vector registers, in parallel
over the rows: softmax (the maximum, the exponentials and their sum, the scaling) and layer
norm (the mean, the variance, the scaling). The exponential is the polynomial of TVM's
``topi.fast_exp`` (Cephes' ``expf``: range reduction by ln 2, a degree-7 polynomial, the power
of two built in the exponent bits), written here as a TIR expression so that it vectorises
inside the kernel; TVM's own softmax and layer norm left the rows serial and the reductions
scalar."""

from __future__ import annotations

from typing import Any

PARALLEL_ELEMENTS = 1 << 14  # softmaxes this large run on every core
LOWEST = -3.4028234663852886e38


def fast_exp(x: Any) -> Any:
    """``exp(x)`` for an fp32 TIR expression, as ``topi.fast_exp`` computes it."""
    from tvm import tirx

    f32 = "float32"
    clamped = tirx.max(tirx.min(x, tirx.const(88.3762626647950, f32)), tirx.const(-88.3762626647949, f32))
    n = tirx.floor(clamped * tirx.const(1.44269504088896341, f32) + tirx.const(0.5, f32))
    f = clamped - n * tirx.const(0.6931471805599453, f32)
    poly = tirx.const(1.9875691500e-4, f32)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        poly = poly * f + tirx.const(c, f32)
    y = poly * f * f + f + tirx.const(1.0, f32)
    power = tirx.reinterpret(f32, tirx.shift_left(tirx.Cast("int32", n + tirx.const(127.0, f32)), 23))
    return tirx.max(power * y, x)  # as topi does


def softmax_kernel(rows: int, n: int, lanes: int) -> Any:
    """The TIR function ``y = softmax(x)`` over the last axis of ``x`` (rows x n)."""
    from tvm.script import tirx as T

    chunks, tail = divmod(n, lanes)
    start = chunks * lanes
    loop = T.parallel if rows * n >= PARALLEL_ELEMENTS and rows > 1 else T.serial

    @T.prim_func(check_well_formed=False)  # a root block around loops that are not blocks
    def softmax(x: T.Buffer((rows, n), "float32"), y: T.Buffer((rows, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):  # Relax inspects a one-input function for a reshape in its root block
            for row in loop(rows):
                vec = T.alloc_buffer((lanes,), "float32", scope="local")
                acc = T.alloc_buffer((1,), "float32", scope="local")
                for v in T.vectorized(lanes):
                    vec[v] = T.float32(LOWEST)
                for k in range(chunks):
                    for v in T.vectorized(lanes):
                        vec[v] = T.max(vec[v], x[row, k * lanes + v])
                acc[0] = T.float32(LOWEST)
                for v in range(lanes):
                    acc[0] = T.max(acc[0], vec[v])
                for t in range(tail):
                    acc[0] = T.max(acc[0], x[row, start + t])
                top: T.let = acc[0]
                for v in T.vectorized(lanes):
                    vec[v] = T.float32(0)
                for k in range(chunks):
                    for v in T.vectorized(lanes):
                        y[row, k * lanes + v] = fast_exp(x[row, k * lanes + v] - top)
                        vec[v] = vec[v] + y[row, k * lanes + v]
                acc[0] = T.float32(0)
                for v in range(lanes):
                    acc[0] = acc[0] + vec[v]
                for t in range(tail):
                    y[row, start + t] = fast_exp(x[row, start + t] - top)
                    acc[0] = acc[0] + y[row, start + t]
                scale: T.let = T.float32(1) / acc[0]
                for k in range(chunks):
                    for v in T.vectorized(lanes):
                        y[row, k * lanes + v] = y[row, k * lanes + v] * scale
                for t in range(tail):
                    y[row, start + t] = y[row, start + t] * scale

    return softmax


def layer_norm_kernel(rows: int, n: int, lanes: int, epsilon: float) -> Any:
    """The TIR function ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta`` over the last
    axis of ``x`` (rows x n; the biased variance, as torch's), ``gamma`` and ``beta`` of n."""
    from tvm.script import tirx as T

    chunks, tail = divmod(n, lanes)
    start = chunks * lanes
    loop = T.parallel if rows * n >= PARALLEL_ELEMENTS and rows > 1 else T.serial

    @T.prim_func
    def layer_norm(
        x: T.Buffer((rows, n), "float32"),
        gamma: T.Buffer((n,), "float32"),
        beta: T.Buffer((n,), "float32"),
        y: T.Buffer((rows, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for row in loop(rows):
            vec = T.alloc_buffer((lanes,), "float32", scope="local")
            acc = T.alloc_buffer((1,), "float32", scope="local")
            for v in T.vectorized(lanes):
                vec[v] = T.float32(0)
            for k in range(chunks):
                for v in T.vectorized(lanes):
                    vec[v] = vec[v] + x[row, k * lanes + v]
            acc[0] = T.float32(0)
            for v in range(lanes):
                acc[0] = acc[0] + vec[v]
            for t in range(tail):
                acc[0] = acc[0] + x[row, start + t]
            mean: T.let = acc[0] / T.float32(n)
            for v in T.vectorized(lanes):
                vec[v] = T.float32(0)
            for k in range(chunks):
                for v in T.vectorized(lanes):
                    vec[v] = vec[v] + (x[row, k * lanes + v] - mean) * (x[row, k * lanes + v] - mean)
            acc[0] = T.float32(0)
            for v in range(lanes):
                acc[0] = acc[0] + vec[v]
            for t in range(tail):
                acc[0] = acc[0] + (x[row, start + t] - mean) * (x[row, start + t] - mean)
            rstd: T.let = T.float32(1) / T.sqrt(acc[0] / T.float32(n) + T.float32(epsilon))
            for k in range(chunks):
                for v in T.vectorized(lanes):
                    y[row, k * lanes + v] = (x[row, k * lanes + v] - mean) * rstd * gamma[
                        k * lanes + v
                    ] + beta[k * lanes + v]
            for t in range(tail):
                y[row, start + t] = (x[row, start + t] - mean) * rstd * gamma[start + t] + beta[start + t]

    return layer_norm
