"""The Relax rewrite of LSTM and GRU layers: the steps ``torch.export`` unrolls become one call
to ``kernels.recurrent_cpu.recurrent_kernel``, the time loop kept as a loop.

torch decomposes ``nn.LSTM`` (``torch._decomp``'s ``one_layer_lstm``, per layer and direction)
into the input projection of every step at once, ``xp = x @ W_ih.T + b_ih``, then per step
``gates = linear(h, W_hh, b_hh) + xp[t]``, ``chunk(4)``, and the gate arithmetic; ``nn.GRU``
(``one_layer_rnn`` with ``gru_cell``) likewise, chunking both ``xp[t]`` and
``linear(h, W_hh, b_hh)`` in three. Each step is matched on that dataflow (``match_step``,
``match_gru_step``); a chain of steps, each reading the previous one's
``h`` and ``c`` and slice ``t`` of one ``xp``, is a layer. Its steps' ``h`` become slices of the
kernel's output and its last ``c`` the kernel's; the unrolled ops then reach nothing and are
dropped. A value the chain does not account for (an intermediate ``c`` read elsewhere) keeps
its old ops, which now read the kernel's outputs: the result is the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from targets.tvm.choose import Choice
from targets.tvm.export import static_shape, weight_digest
from targets.tvm.kernels import Format, Packed, pack
from targets.tvm.kernels.recurrent_cpu import GATES, recurrent_kernel, weight_arrays
from targets.tvm.rewrite import Layer, drop_unused

VIEWS = ("relax.reshape", "relax.squeeze", "relax.expand_dims")


@dataclass
class Step:
    """One unrolled LSTM or GRU step (``cell``): its outputs ``h`` and ``c`` (vars; a GRU has no
    ``c``), what it reads (``h_prev`` and ``c_prev`` as expressions, ``xp`` and the step ``t`` it
    slices) and its weight."""

    h: Any
    c: Any
    h_prev: Any
    c_prev: Any
    xp: Any
    t: int
    weight: np.ndarray  # W_hh, 4H x H (a GRU's 3H x H)
    bias: np.ndarray | None  # b_hh
    cell: str = "lstm"


class Graph:
    """The bindings of a Relax function, read through its vars."""

    def __init__(self, func: Any) -> None:
        from tvm import relax

        self.values = relax.analysis.get_var2val(func)

    def value(self, expr: Any) -> Any:
        from tvm import relax

        return self.values.get(expr, expr) if isinstance(expr, relax.Var) else expr

    def call(self, expr: Any, op: str) -> Any:
        """The call ``expr`` is bound to if its op is ``op``, else None."""
        from tvm import relax

        value = self.value(expr)
        if isinstance(value, relax.Call) and getattr(value.op, "name", None) == op:
            return value
        return None

    def item(self, expr: Any, index: int) -> Any:
        """The tuple ``expr`` takes item ``index`` of, else None."""
        from tvm import relax

        value = self.value(expr)
        if isinstance(value, relax.TupleGetItem) and value.index == index:
            return value.tuple_value
        return None

    def unview(self, expr: Any) -> Any:
        """``expr`` with the reshapes, squeezes and expand_dims around it taken off."""
        while True:
            value = self.value(expr)
            if all(self.call(expr, op) is None for op in VIEWS):
                return expr
            expr = value.args[0]

    def either(self, call: Any, first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Any:
        """``(first(a), second(b))`` for the operands of a commutative ``call`` in the order in
        which both match (neither None), else None."""
        a, b = call.args
        for x, y in ((a, b), (b, a)):
            left, right = first(x), second(y)
            if left is not None and right is not None:
                return left, right
        return None

    def gate(self, expr: Any, op: str, split: Any, index: int) -> Any:
        """``expr`` is ``op(split[index])``: the split, else None."""
        call = self.call(expr, op)
        if call is None:
            return None
        source = self.item(call.args[0], index)
        return source if source is not None and (split is None or source.same_as(split)) else None


def match_step(graph: Graph, var: Any) -> Step | None:
    """The LSTM step whose ``h`` ``var`` is, or None: ``h = o * tanh(c)``,
    ``c = f * c_prev + i * g`` with ``i, f, g, o`` = sigmoid, sigmoid, tanh, sigmoid of the four
    chunks of ``linear(h_prev, W_hh, b_hh) + xp[t]``."""
    out = graph.call(var, "relax.multiply")
    if out is None:
        return None
    found = graph.either(
        out, lambda e: graph.gate(e, "relax.sigmoid", None, 3), lambda e: graph.call(e, "relax.tanh")
    )
    if found is None:
        return None
    split_var, tanh_c = found
    c = tanh_c.args[0]
    split = graph.call(split_var, "relax.split")
    cell = graph.call(c, "relax.add")
    if split is None or cell is None:
        return None
    shape = static_shape(split.args[0])
    if shape is None or shape[-1] % 4:
        return None
    hidden = shape[-1] // 4
    axis = int(split.attrs.axis)
    if [int(i) for i in split.attrs.indices_or_sections] != [hidden, 2 * hidden, 3 * hidden] or axis not in (
        -1,
        len(shape) - 1,
    ):
        return None

    def forget(e: Any) -> Any:  # f * c_prev: c_prev
        product = graph.call(e, "relax.multiply")
        if product is None:
            return None
        found = graph.either(product, lambda x: graph.gate(x, "relax.sigmoid", split_var, 1), lambda x: x)
        return None if found is None else found[1]

    def update(e: Any) -> Any:  # i * g
        product = graph.call(e, "relax.multiply")
        if product is None:
            return None
        return graph.either(
            product,
            lambda x: graph.gate(x, "relax.sigmoid", split_var, 0),
            lambda x: graph.gate(x, "relax.tanh", split_var, 2),
        )

    terms = graph.either(cell, forget, update)
    gates = graph.call(split.args[0], "relax.add")
    if terms is None or gates is None:
        return None
    found = graph.either(gates, lambda e: recurrent_linear(graph, e), lambda e: step_input(graph, e))
    if found is None:
        return None
    (h_prev, weight, bias), (xp, t) = found
    if weight.shape != (4 * hidden, hidden):
        return None
    return Step(var, c, h_prev, terms[0], xp, t, weight, bias)


def match_gru_step(graph: Graph, var: Any) -> Step | None:
    """The GRU step whose ``h`` ``var`` is, or None: ``h = (h_prev - n) * z + n``,
    ``n = tanh(xn + hn * r)``, ``r = sigmoid(hr + xr)``, ``z = sigmoid(hz + xz)``, where
    ``xr, xz, xn`` are the chunks of ``xp[t]`` and ``hr, hz, hn`` those of
    ``linear(h_prev, W_hh, b_hh)``."""
    out = graph.call(var, "relax.add")
    if out is None:
        return None
    is_tanh = lambda e: e if graph.call(e, "relax.tanh") is not None else None  # noqa: E731
    found = graph.either(out, lambda e: graph.call(e, "relax.multiply"), is_tanh)
    if found is None:
        return None
    product, n = found
    found = graph.either(
        product, lambda e: graph.call(e, "relax.subtract"), lambda e: graph.call(e, "relax.sigmoid")
    )
    if found is None or not found[0].args[1].same_as(n):
        return None
    z, h_prev = found[1], found[0].args[0]
    splits = _gate_sum(graph, z.args[0], 1)
    new = graph.call(graph.call(n, "relax.tanh").args[0], "relax.add")
    if splits is None or new is None:
        return None
    recurrent, inputs = splits

    def reset(e: Any) -> Any:  # hn * r, r = sigmoid(hr + xr)
        product = graph.call(e, "relax.multiply")
        if product is None:
            return None
        return graph.either(
            product,
            lambda x: x if _is_item(graph, x, recurrent, 2) else None,
            lambda x: x if _gate_sum(graph, _argument(graph, x, "relax.sigmoid"), 0) == splits else None,
        )

    if graph.either(new, lambda e: e if _is_item(graph, e, inputs, 2) else None, reset) is None:
        return None
    linear = recurrent_linear(graph, graph.call(recurrent, "relax.split").args[0])
    xp = step_input(graph, graph.call(inputs, "relax.split").args[0])
    if linear is None or xp is None:
        return None
    h_lin, weight, bias = linear
    hidden = weight.shape[1]
    if weight.shape != (3 * hidden, hidden) or not graph.unview(h_lin).same_as(graph.unview(h_prev)):
        return None
    for split in (recurrent, inputs):
        call = graph.call(split, "relax.split")
        shape = static_shape(call.args[0])
        sections = [int(i) for i in call.attrs.indices_or_sections]
        if (
            shape is None
            or sections != [hidden, 2 * hidden]
            or int(call.attrs.axis) not in (-1, len(shape) - 1)
        ):
            return None
    return Step(var, None, h_prev, None, xp[0], xp[1], weight, bias, "gru")


def _is_item(graph: Graph, expr: Any, split: Any, index: int) -> bool:
    source = graph.item(expr, index)
    return source is not None and source.same_as(split)


def _argument(graph: Graph, expr: Any, op: str) -> Any:
    """The operand of ``expr`` if it is a call of ``op``, else None."""
    call = graph.call(expr, op)
    return None if call is None else call.args[0]


def _gate_sum(graph: Graph, expr: Any, index: int) -> tuple[Any, Any] | None:
    """``expr`` is ``a[index] + b[index]`` for two splits, ``a`` of the recurrent linear and ``b``
    of the step's input: ``(a, b)``, else None."""
    add = None if expr is None else graph.call(expr, "relax.add")
    if add is None:
        return None

    def split_of(e: Any, recurrent: bool) -> Any:
        source = graph.item(e, index)
        call = None if source is None else graph.call(source, "relax.split")
        if call is None:
            return None
        return source if (recurrent_linear(graph, call.args[0]) is not None) == recurrent else None

    return graph.either(add, lambda e: split_of(e, True), lambda e: split_of(e, False))


def recurrent_linear(graph: Graph, expr: Any) -> tuple[Any, np.ndarray, np.ndarray | None] | None:
    """``expr`` is ``h @ W.T (+ b)`` for constant ``W`` and ``b`` (views around it allowed):
    ``(h, W, b)``, else None."""
    expr = graph.unview(expr)
    bias = None
    if (add := graph.call(expr, "relax.add")) is not None:
        found = graph.either(add, lambda e: constant(e), lambda e: e)
        if found is None:
            return None
        bias, expr = found
    matmul = graph.call(expr, "relax.matmul")
    if matmul is None:
        return None
    x, w = matmul.args
    transpose = graph.call(w, "relax.permute_dims")
    weight = None if transpose is None else constant(transpose.args[0])
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
        return None
    axes = transpose.attrs.axes
    if axes is not None and [int(a) for a in axes] != [1, 0]:
        return None
    if bias is not None and (bias.dtype != np.float32 or bias.size != weight.shape[0]):
        return None
    return x, weight, None if bias is None else bias.reshape(-1)


def constant(expr: Any) -> np.ndarray | None:
    """The value of a Relax constant, else None."""
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def input_bias(graph: Graph, xp: Any, rows: int) -> tuple[Any, np.ndarray] | None:
    """``xp`` is ``p + b`` (views around it allowed) for a constant ``b`` of ``rows`` values, the
    input projection's bias: ``(p, b)``, else None."""
    add = graph.call(graph.unview(xp), "relax.add")
    if add is None:
        return None
    found = graph.either(add, lambda e: e if constant(e) is None else None, constant)
    if (
        found is None
        or found[1].dtype != np.float32
        or found[1].shape[-1:] != (rows,)
        or found[1].size != rows
    ):
        return None  # a bias along the last axis only
    shape, expected = static_shape(found[0]), static_shape(xp)
    if shape is None or expected is None or int(np.prod(shape)) != int(np.prod(expected)):
        return None
    return found[0], found[1].reshape(-1)


def step_input(graph: Graph, expr: Any) -> tuple[Any, int] | None:
    """``expr`` is step ``t`` of ``xp`` (``xp[t:t+1]`` along axis 0, views around it allowed):
    ``(xp, t)``, else None."""
    sliced = graph.call(graph.unview(expr), "relax.strided_slice")
    if sliced is None:
        return None
    try:
        axes, begin, end, *strides = ([int(v) for v in arg] for arg in sliced.args[1:])
    except (TypeError, ValueError):
        return None
    if axes != [0] or end != [begin[0] + 1] or any(s != [1] for s in strides):
        return None
    return sliced.args[0], begin[0]


@dataclass
class Chain:
    """An LSTM or GRU layer: its steps in order."""

    steps: list[Step]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(steps, batch, hidden)."""
        hidden = self.steps[0].weight.shape[1]
        batch = int(np.prod(static_shape(self.steps[0].h))) // hidden
        return len(self.steps), batch, hidden


def chains(graph: Graph, bindings: list[Any]) -> list[Chain]:
    """The LSTM and GRU layers among ``bindings``: chains of steps on one ``xp`` and one weight,
    step ``t`` reading step ``t - 1``'s outputs, ``xp`` holding exactly the chain's steps."""
    steps = [
        s
        for b in bindings
        if (s := match_step(graph, b.var)) is not None or (s := match_gru_step(graph, b.var)) is not None
    ]
    by_h = {s.h: s for s in steps}
    following: dict[Any, Step] = {}
    for s in steps:
        prev = by_h.get(graph.unview(s.h_prev))
        if prev is not None and prev.cell == s.cell and (s.c_prev is None or s.c_prev.same_as(prev.c)):
            following[prev.h] = s
    firsts = [s for s in steps if graph.unview(s.h_prev) not in by_h]
    found = []
    for first in firsts:
        chain = [first]
        while chain[-1].h in following:
            chain.append(following[chain[-1].h])
        if all(_continues(chain[0], s, t) for t, s in enumerate(chain)):
            xp = static_shape(first.xp)
            layer = Chain(chain)
            count, batch, hidden = layer.shape
            gates = GATES[first.cell]
            if xp is not None and int(np.prod(xp)) == count * batch * gates * hidden and xp[0] == count:
                found.append(layer)
    return found


def _continues(first: Step, step: Step, t: int) -> bool:
    same_bias = (first.bias is None) == (step.bias is None) and (
        first.bias is None or np.array_equal(first.bias, step.bias)
    )
    return (
        step.t == t
        and step.cell == first.cell
        and step.xp.same_as(first.xp)
        and same_bias
        and (step.weight is first.weight or np.array_equal(step.weight, first.weight))
    )


def layer_format(choice: Format) -> Format:
    """The recurrent kernel's storage for ``W_hh`` from the matmul format chosen for it: CSR or dense
    as chosen; block formats as CSR (the kernel takes 1x1 blocks), the GEMM as dense."""
    if choice.kind == "bsr":
        unroll = choice.unroll if choice.block == (1, 1) else 4
        return Format("bsr", (1, 1), unroll, choice.dtype, parallel=choice.parallel)
    return Format("dense", unroll=choice.unroll if choice.kind == "dense" else 2, parallel=choice.parallel)


def candidates(matmul: Format) -> list[Format]:
    """The recurrent kernels timed for a layer: ``W_hh`` stored as chosen for the recurrent matmul
    (``layer_format``), on every core and on one (a small layer's step may cost less than
    waking the thread pool), and CSR also in pairs of nonzeros (less padding per row)."""
    fmt = layer_format(matmul)
    formats = [fmt, replace(fmt, parallel=not fmt.parallel)]
    if fmt.sparse and fmt.unroll != 2:
        formats += [replace(f, unroll=2) for f in formats]
    return formats


def timing_call(
    packed: Packed, steps: int, batch: int, lanes: int, cell: str
) -> tuple[Any, list[np.ndarray]]:
    """The recurrent kernel for ``packed`` and arguments to time it on: random inputs and state
    (real inputs are not zero)."""
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


class Chooser(Protocol):
    def choose(self, weight: np.ndarray, batch: int) -> Choice: ...

    def choose_kernel(
        self,
        weight: np.ndarray,
        batch: int,
        kind: str,
        candidates: list[Format],
        make: Callable[[Format], tuple[Any, list[np.ndarray]]],
    ) -> Choice: ...

    def label(self, fmt: Format) -> str: ...


def rewrite_recurrent(
    mod: Any, chooser: Chooser, lanes: int, names: dict[bytes, str] | None = None
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
        matmul = chooser.choose(step.weight, batch)

        cell, rows = step.cell, step.weight.shape[0]

        def make(
            fmt: Format,
            weight: np.ndarray = step.weight,
            steps: int = count,
            batch: int = batch,
            cell: str = cell,
        ) -> tuple[Any, list[np.ndarray]]:
            return timing_call(pack(weight, fmt), steps, batch, lanes, cell)

        kinds = candidates(matmul.format)
        choice = chooser.choose_kernel(step.weight, batch, f"{cell}-{count}", kinds, make)
        fmt = choice.format
        packed: Packed = pack(step.weight, fmt)
        symbol = f"{cell}_{fmt.name.replace('-', '_')}_{index}"
        attrs = {"global_symbol": symbol, "tirx.is_scheduled": True, "op_pattern": 8}
        func = recurrent_kernel(packed, count, batch, lanes, cell)
        gvar = builder.add_func(func.with_attrs(attrs), symbol)
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
