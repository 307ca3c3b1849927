"""A whole LSTM or GRU layer on a CPU in one TIR function: the time loop kept as a loop, each
step's recurrent matmul (``W_hh`` dense or CSR) and gate arithmetic fused, in parallel over
groups of hidden units.

Unrolled, each step of a small LSTM costs a kernel call for the matmul, one or two for the
gates and the VM's dispatch around them, more than the work itself. Here a step is one pass over
the hidden units: a group of ``lanes`` units takes its gate rows of ``W_hh`` (four, a GRU's
three: dot products with the previous ``h``, dense or over the row's nonzeros; or, with
``W_hh`` in blocks of ``lanes`` rows by one column, a vector of the group's sums per gate, each
block times one broadcast ``h[k]``, no gather), adds the biases
and the step's input projection (computed beforehand for every step at once, as torch does),
and updates ``c`` and ``h`` in vector registers. ``h`` alternates between two buffers, so a
step reads the previous one while it writes the next; every hidden unit's output is written by
one work item only. On every core the thread pool is started once per layer, not per step: each
thread runs the time loop over its share of the groups and waits at a barrier after each step
(``pragma_parallel_barrier_when_finish``) until every thread has written its part of the next ``h``.

The gates follow torch's order: an LSTM's input, forget, cell, output (``c = f * c + i * g``,
``h = o * tanh(c)``), a GRU's reset, update, new. The exponentials are ``rows_cpu.fast_exp``;
``tanh(x) = 2 sigmoid(2x) - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from targets.tvm.kernels.formats import Packed
from targets.tvm.kernels.rows_cpu import fast_exp

CHUNKS = 64  # parallel work items per step at most (groups of hidden units per item: the rest)
DENSE_WIDTH = 16  # products of a dense gate row summed in parallel at most
CHAINS = 4  # independent accumulators of a CSR row: one would wait on each FMA's latency


def sigmoid(x: Any) -> Any:
    from tvm import tirx

    one = tirx.const(1.0, "float32")
    return one / (one + fast_exp(tirx.const(0.0, "float32") - x))


def tanh(x: Any) -> Any:
    from tvm import tirx

    two = tirx.const(2.0, "float32")
    return two * sigmoid(two * x) - tirx.const(1.0, "float32")


GATES = {"lstm": 4, "gru": 3}


def recurrent_kernel(packed: Packed, steps: int, batch: int, lanes: int, cell: str = "lstm") -> Any:
    """The TIR function of an LSTM or GRU layer (``cell``) over ``steps`` steps, ``packed`` its
    ``W_hh`` (4H x H, or 3H x H), dense, CSR (1x1 blocks) or in ``lanes`` x 1 blocks (H a
    multiple of ``lanes``).

    Arguments: ``xp`` (steps, batch, 4H or 3H), the input projections ``x_t @ W_ih.T + b_ih`` in
    step order; ``weight_arrays(packed)``; ``bias``, ``b_hh``; ``h0`` (batch, H); ``c0`` (batch,
    H; a GRU's is a placeholder of shape (1,)). Outputs: ``hs`` (steps, batch, H), each step's
    ``h``, and ``c``, the last cell state (a GRU's a placeholder).

    A GRU step (torch's): ``r = sigmoid(xr + hr)``, ``z = sigmoid(xz + hz)``,
    ``n = tanh(xn + r * hn)``, ``h = (h_prev - n) * z + n``, ``hr, hz, hn`` including ``b_hh``.
    """
    from tvm.script import tirx as T

    rows, hidden = packed.shape
    gates = GATES[cell]
    lstm = cell == "lstm"
    if rows != gates * hidden:
        raise ValueError(f"{cell}'s W_hh is {gates}H x H; got {rows} x {hidden}")
    dense = packed.format.kind == "dense"
    vec = lanes if hidden % lanes == 0 else 1
    blocked = not dense and packed.format.block == (vec, 1) and vec > 1
    if not dense and packed.format.block != (1, 1) and not blocked:
        raise ValueError(
            f"the recurrent kernel takes W_hh dense, CSR or in {vec}x1 blocks, not {packed.format.name}"
        )
    state = (batch, hidden) if lstm else (1,)
    values, indices, indptr = weight_arrays(packed)
    u = packed.format.unroll
    # products summed in parallel per gate row; a dense row's are then summed one by one, which
    # past 16 costs more than the parallel sums save
    width = min(lanes * u, DENSE_WIDTH) if dense else vec if blocked else u
    main = hidden // width * width
    groups = hidden // vec
    per = -(-groups // min(groups, CHUNKS)) if packed.format.parallel else groups
    chunks = -(-groups // per)
    loop = T.parallel if packed.format.parallel else T.serial
    vdt, idt = str(values.dtype), str(indices.dtype)
    chains = 1 if dense else u if blocked else CHAINS

    @T.macro
    def step(xp, w_values, w_indices, w_indptr, bias, hs, c, h, t):
        """Step ``t``: every group of hidden units, reading ``h[t % 2]`` and writing ``h[(t + 1) % 2]``."""
        for chunk in loop(chunks):
            gate = T.alloc_buffer((gates, vec), "float32", scope="local")
            acc = T.alloc_buffer((chains, width), "float32", scope="local")
            for g0 in range(T.min(per, groups - chunk * per)):
                first: T.let = (chunk * per + g0) * vec
                for b in range(batch):
                    if blocked:  # gate g of the group's units: one block row, a vector of sums
                        for g in range(gates):
                            block_row: T.let = (g * hidden + first) // vec
                            for a in T.unroll(chains):
                                for j in T.vectorized(vec):
                                    acc[a, j] = T.float32(0)
                            for q in range(w_indptr[block_row + 1] - w_indptr[block_row]):
                                for a in T.unroll(chains):
                                    slot: T.let = (w_indptr[block_row] + q) * u + a
                                    for j in T.vectorized(vec):
                                        acc[a, j] = (
                                            acc[a, j]
                                            + T.Cast("float32", w_values[slot, j, 0])
                                            * h[t % 2, b, T.Cast("int32", w_indices[slot])]
                                        )
                            for a in T.unroll(1, chains):
                                for j in T.vectorized(vec):
                                    acc[0, j] = acc[0, j] + acc[a, j]
                            for j in T.vectorized(vec):
                                if lstm:
                                    gate[g, j] = (
                                        bias[g * hidden + first + j]
                                        + xp[t, b, g * hidden + first + j]
                                        + acc[0, j]
                                    )
                                else:
                                    gate[g, j] = bias[g * hidden + first + j] + acc[0, j]
                    else:
                        for g, v in T.grid(gates, vec):
                            row: T.let = g * hidden + first + v
                            for a in T.unroll(chains):
                                for j in T.vectorized(width):
                                    acc[a, j] = T.float32(0)
                            if lstm:  # a GRU adds its input after the reset gate
                                gate[g, v] = bias[row] + xp[t, b, row]
                            else:
                                gate[g, v] = bias[row]
                            if dense:
                                for p in range(hidden // width):
                                    for j in T.vectorized(width):
                                        acc[0, j] = (
                                            acc[0, j]
                                            + T.Cast("float32", w_values[row, p * width + j])
                                            * h[t % 2, b, p * width + j]
                                        )
                                for p in range(hidden - main):
                                    gate[g, v] = (
                                        gate[g, v]
                                        + T.Cast("float32", w_values[row, main + p]) * h[t % 2, b, main + p]
                                    )
                            else:
                                start: T.let = w_indptr[row]
                                count: T.let = w_indptr[row + 1] - start
                                for q in range(count // chains):
                                    for a in T.unroll(chains):
                                        p: T.let = start + q * chains + a
                                        for j in T.vectorized(width):
                                            acc[a, j] = (
                                                acc[a, j]
                                                + T.Cast("float32", w_values[p * width + j, 0, 0])
                                                * h[t % 2, b, T.Cast("int32", w_indices[p * width + j])]
                                            )
                                for q in range(count % chains):
                                    p: T.let = start + count // chains * chains + q
                                    for j in T.vectorized(width):
                                        acc[0, j] = (
                                            acc[0, j]
                                            + T.Cast("float32", w_values[p * width + j, 0, 0])
                                            * h[t % 2, b, T.Cast("int32", w_indices[p * width + j])]
                                        )
                            for a in T.unroll(1, chains):
                                for j in T.vectorized(width):
                                    acc[0, j] = acc[0, j] + acc[a, j]
                            for j in T.unroll(width):
                                gate[g, v] = gate[g, v] + acc[0, j]
                    if lstm:
                        for v in T.vectorized(vec):
                            c[b, first + v] = sigmoid(gate[1, v]) * c[b, first + v] + sigmoid(
                                gate[0, v]
                            ) * tanh(gate[2, v])
                        for v in T.vectorized(vec):
                            hs[t, b, first + v] = sigmoid(gate[3, v]) * tanh(c[b, first + v])
                    else:
                        for v in T.vectorized(vec):
                            hs[t, b, first + v] = (
                                h[t % 2, b, first + v]
                                - tanh(
                                    xp[t, b, 2 * hidden + first + v]
                                    + sigmoid(gate[0, v] + xp[t, b, first + v]) * gate[2, v]
                                )
                            ) * sigmoid(gate[1, v] + xp[t, b, hidden + first + v]) + tanh(
                                xp[t, b, 2 * hidden + first + v]
                                + sigmoid(gate[0, v] + xp[t, b, first + v]) * gate[2, v]
                            )
                    for v in T.vectorized(vec):
                        h[(t + 1) % 2, b, first + v] = hs[t, b, first + v]

    @T.prim_func
    def recurrent_layer(
        xp: T.Buffer((steps, batch, rows), "float32"),
        w_values: T.Buffer(values.shape, vdt),
        w_indices: T.Buffer(indices.shape, idt),
        w_indptr: T.Buffer(indptr.shape, "int32"),
        bias: T.Buffer((rows,), "float32"),
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer(state, "float32"),
        hs: T.Buffer((steps, batch, hidden), "float32"),
        c: T.Buffer(state, "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        h = T.alloc_buffer((2, batch, hidden), "float32")
        for b, i in T.grid(batch, hidden):
            h[0, b, i] = h0[b, i]
            if lstm:
                c[b, i] = c0[b, i]
        if packed.format.parallel:
            # one launch of the thread pool for the whole layer, a barrier after each step: waking
            # the pool per step cost more than a small step's work
            with T.attr(0, "pragma_parallel_launch_point", 1):
                for t in range(steps):
                    with T.attr(0, "pragma_parallel_barrier_when_finish", 1):
                        step(xp, w_values, w_indices, w_indptr, bias, hs, c, h, t)
        else:
            for t in range(steps):
                step(xp, w_values, w_indices, w_indptr, bias, hs, c, h, t)

    return recurrent_layer


def weight_arrays(packed: Packed) -> list[np.ndarray]:
    """The weight arguments of ``recurrent_kernel``: CSR's values, indices and indptr; a dense weight
    with two one-element placeholders."""
    if packed.format.kind == "dense":
        return [packed.arrays[0], np.zeros(1, np.uint16), np.zeros(1, np.int32)]
    return list(packed.arrays)
