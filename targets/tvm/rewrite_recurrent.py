"""The Relax rewrite of LSTM and GRU layers: the steps ``torch.export`` unrolls become one call
to ``kernels.recurrent_cpu.recurrent_kernel``, the time loop kept as a loop.

torch decomposes ``nn.LSTM`` (``torch._decomp``'s ``one_layer_lstm``, per layer and direction)
into the input projection of every step at once, ``xp = x @ W_ih.T + b_ih``, then per step
``gates = linear(h, W_hh, b_hh) + xp[t]``, ``chunk(4)``, and the gate arithmetic; ``nn.GRU``
(``one_layer_rnn`` with ``gru_cell``) likewise, chunking both ``xp[t]`` and
``linear(h, W_hh, b_hh)`` in three. ``recurrent_steps`` finds the steps and joins them into
layers (a chain of steps, each reading the previous one's ``h`` and ``c`` and slice ``t`` of
one ``xp``). Here each layer becomes a kernel call: its steps' ``h`` become slices of the
kernel's output and its last ``c`` the kernel's; the unrolled ops then reach nothing and are
dropped. A value the chain does not account for (an intermediate ``c`` read elsewhere) keeps
its old ops, which now read the kernel's outputs: the result is the same either way.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from targets.tvm.choose import KernelChooser
from targets.tvm.export import static_shape, weight_digest
from targets.tvm.kernels import Format, Packed, pack
from targets.tvm.kernels.recurrent_cpu import GATES, recurrent_kernel, weight_arrays
from targets.tvm.recurrent_steps import Chain, Graph, chains, input_bias
from targets.tvm.rewrite import Layer, add_kernel, drop_unused


def layer_format(choice: Format) -> Format:
    """The recurrent kernel's storage for ``W_hh`` from the matmul format chosen for it: CSR or dense
    as chosen; block formats as CSR (the kernel takes 1x1 blocks), the GEMM as dense."""
    if choice.kind == "bsr":
        unroll = choice.unroll if choice.block == (1, 1) else 4
        return Format("bsr", (1, 1), unroll, choice.dtype, parallel=choice.parallel)
    return Format("dense", unroll=choice.unroll if choice.kind == "dense" else 2, parallel=choice.parallel)


def candidates(matmul: Format, lanes: int, hidden: int) -> list[Format]:
    """The recurrent kernels timed for a layer: ``W_hh`` stored as chosen for the recurrent matmul
    (``layer_format``), on every core and on one (a small layer's step may cost less than
    waking the thread pool), and CSR also in pairs of nonzeros (less padding per row). A sparse
    ``W_hh`` also in blocks of ``lanes`` rows by one column: a block is the column's values for
    the group of hidden units a vector holds, multiplied by one broadcast ``h[k]``, where CSR
    gathers ``h`` one nonzero at a time (more multiplies, at 92% about seven per nonzero, but no
    gather: on AVX-512 the faster)."""
    fmt = layer_format(matmul)
    formats = [fmt, replace(fmt, parallel=not fmt.parallel)]
    if fmt.sparse and fmt.unroll != 2:
        formats += [replace(f, unroll=2) for f in formats]
    if fmt.sparse and lanes > 1 and hidden % lanes == 0:
        formats += [
            Format("bsr", (lanes, 1), 4, fmt.dtype, parallel=p) for p in (fmt.parallel, not fmt.parallel)
        ]
    return formats


def layer_lanes(hidden: int, lanes: int) -> int:
    """The vector width for a layer of ``hidden`` units: ``lanes``, or 8 where AVX-512's 16 do not
    divide it (the kernel runs a width that does not divide ``hidden`` one unit at a time)."""
    return lanes if hidden % lanes == 0 or lanes <= 8 else 8


def timing_call(
    weight: np.ndarray, steps: int, batch: int, lanes: int, cell: str, fmt: Format
) -> tuple[Any, list[np.ndarray]]:
    """The recurrent kernel for ``weight`` stored as ``fmt``, and arguments to time it on: random
    inputs and state (real inputs are not zero)."""
    packed = pack(weight, fmt)
    rows, hidden = packed.shape
    rng = np.random.default_rng(0)
    state = (batch, hidden) if cell == "lstm" else (1,)
    arrays = [
        rng.standard_normal((steps, batch, rows)).astype(np.float32),
        *weight_arrays(packed),
        rng.standard_normal(rows).astype(np.float32),
        rng.standard_normal((batch, hidden)).astype(np.float32),
        rng.standard_normal(state).astype(np.float32),
        np.zeros((steps, batch, hidden), np.float32),
        np.zeros(state, np.float32),
    ]
    return recurrent_kernel(packed, steps, batch, lanes, cell), arrays


def rewrite_recurrent(
    mod: Any, chooser: KernelChooser, lanes: int, names: dict[bytes, str] | None = None
) -> tuple[Any, list[Layer]]:
    """Replace each LSTM or GRU layer of ``main`` by a call to the recurrent kernel: ``W_hh`` stored as the
    ``chooser`` picks for the recurrent matmul at the layer's batch, then the faster of that
    kernel on every core or on one, timed (``KernelChooser.choose_kernel``)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    names = names or {}
    main = mod["main"]
    graph = Graph(main)
    bindings = [b for block in main.body.blocks for b in block.bindings]
    layers = chains(graph, bindings)
    if not layers:
        return mod, []
    builder = relax.BlockBuilder(mod)
    records: list[Layer] = []
    at_first: dict[Any, tuple[Chain, Any, Any, list[Any]]] = {}
    for index, chain in enumerate(layers):
        count, batch, hidden = chain.shape
        step = chain.steps[0]
        cell, rows = step.cell, step.weight.shape[0]
        width = layer_lanes(hidden, lanes)
        kinds = candidates(chooser.choose(step.weight, batch).format, width, hidden)
        make = partial(timing_call, step.weight, count, batch, width, cell)
        choice = chooser.choose_kernel(step.weight, batch, f"{cell}-{count}-l{width}", kinds, make)
        fmt = choice.format
        packed: Packed = pack(step.weight, fmt)
        symbol = f"{cell}_{fmt.name.replace('-', '_')}_{index}"
        gvar = add_kernel(builder, recurrent_kernel(packed, count, batch, width, cell), symbol)
        bias = step.bias if step.bias is not None else np.zeros(rows, np.float32)
        xp = step.xp
        if cell == "lstm" and (folded := input_bias(graph, xp, rows)) is not None:
            xp, bias = folded[0], bias + folded[1]  # b_ih beside b_hh: one pass over xp fewer
        consts = [relax.const(np.ascontiguousarray(a)) for a in (*weight_arrays(packed), bias)]
        for var in (step.c, step.h):  # the layer goes in at whichever comes first
            if var is not None:
                at_first[var] = (chain, gvar, xp, consts)
        records.append(
            Layer(
                name=names.get(weight_digest(step.weight), f"{cell}{index}.weight_hh"),
                shape=(rows, hidden),
                batch=batch,
                sparsity=round(1.0 - np.count_nonzero(step.weight) / step.weight.size, 4),
                format=f"{cell}-layer+{chooser.label(fmt)}",
                calls=None,
                times_ms={f"{cell}-layer+{f}": round(t, 5) for f, t in choice.times_ms.items()},
                cached=choice.cached,
                symbol=symbol,
            )
        )

    @mutator
    class Replace(PyExprMutator):
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.outputs: dict[Any, tuple[Any, int | None, list[int]]] = {}

        def visit_var_binding_(self, binding: Any) -> None:
            var = binding.var
            if var in at_first and var not in self.outputs:
                self.emit_layer(*at_first[var])
            if var in self.outputs:
                result, t, shape = self.outputs[var]
                value = result if t is None else relax.op.strided_slice(result, [0], [t], [t + 1])
                value = relax.op.reshape(value, shape)
            elif (hs := self.stacked(binding.value)) is not None:
                value = relax.op.reshape(hs, static_shape(var))
            else:
                super().visit_var_binding_(binding)
                return
            emit = self.builder_.emit if isinstance(var, relax.DataflowVar) else self.builder_.emit_output
            self.set_var_remap(var, emit(value))

        def stacked(self, value: Any) -> Any:
            """The kernel output ``value`` equals: a ``concat`` along axis 0 of every step's ``h``
            of one layer, in step order; else None."""
            concat = graph.call(value, "relax.concat")
            if concat is None or int(concat.attrs.axis) != 0 or not isinstance(concat.args[0], relax.Tuple):
                return None
            fields = list(concat.args[0].fields)
            for chain in layers:
                hs = [s.h for s in chain.steps]
                if len(fields) == len(hs) and all(f.same_as(h) for f, h in zip(fields, hs, strict=True)):
                    return self.outputs[hs[0]][0]
            return None

        def emit_layer(self, chain: Chain, gvar: Any, xp: Any, consts: list[Any]) -> None:
            count, batch, hidden = chain.shape
            first, last = chain.steps[0], chain.steps[-1]
            lstm = first.cell == "lstm"
            state = (batch, hidden) if lstm else (1,)
            rows = GATES[first.cell] * hidden
            c0 = (
                relax.op.reshape(self.visit_expr(first.c_prev), state)
                if lstm
                else relax.const(np.zeros(1, np.float32))
            )
            args = [
                relax.op.reshape(self.visit_expr(xp), (count, batch, rows)),
                *consts,
                relax.op.reshape(self.visit_expr(first.h_prev), (batch, hidden)),
                c0,
            ]
            out_ty = [relax.TensorType((count, batch, hidden), "float32"), relax.TensorType(state, "float32")]
            result = self.builder_.emit(relax.call_tir(gvar, args, out_ty=out_ty))
            hs = self.builder_.emit(relax.TupleGetItem(result, 0))
            for t, step in enumerate(chain.steps):
                self.outputs[step.h] = (hs, t, static_shape(step.h))
            if lstm:
                c = self.builder_.emit(relax.TupleGetItem(result, 1))
                self.outputs[last.c] = (c, None, static_shape(last.c))

    before = {gvar.name_hint for gvar in mod.get_global_vars()}
    rewriter = Replace(builder.get())
    new_main = rewriter.visit_expr(main)
    module = rewriter.builder_.get()
    module["main"] = new_main
    return drop_unused(module, before), records
