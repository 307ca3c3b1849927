"""The unrolled steps of LSTM and GRU layers in a Relax graph, as ``torch.export`` writes them
(torch's ``one_layer_lstm`` and ``one_layer_rnn`` with ``gru_cell``), matched on their dataflow
(``match_step``, ``match_gru_step``) and joined into layers (``chains``): each step reading the
previous one's ``h`` (and ``c``) and slice ``t`` of one input projection ``xp``. What
``rewrite_recurrent`` replaces by one kernel call per layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from targets.tvm.export import static_shape
from targets.tvm.kernels.recurrent_cpu import GATES

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
    hidden = chunk_size(split, 4)
    if hidden is None:
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
    found = graph.either(
        out,
        lambda e: graph.call(e, "relax.multiply"),
        lambda e: e if graph.call(e, "relax.tanh") is not None else None,
    )
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
            lambda x: x if _same(_gate_sum(graph, _argument(graph, x, "relax.sigmoid"), 0), splits) else None,
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
    if any(chunk_size(graph.call(split, "relax.split"), 3) != hidden for split in (recurrent, inputs)):
        return None
    return Step(var, None, h_prev, None, xp[0], xp[1], weight, bias, "gru")


def chunk_size(split: Any, parts: int) -> int | None:
    """The size of each chunk when the ``split`` call cuts its input's last axis into ``parts``
    equal chunks (torch's ``chunk``), else None."""
    shape = static_shape(split.args[0])
    if shape is None or shape[-1] % parts or int(split.attrs.axis) not in (-1, len(shape) - 1):
        return None
    size = shape[-1] // parts
    try:
        sections = [int(i) for i in split.attrs.indices_or_sections]
    except TypeError:  # a number of sections, not indices
        return None
    return size if sections == [size * i for i in range(1, parts)] else None


def _same(found: tuple[Any, Any] | None, expected: tuple[Any, Any]) -> bool:
    return found is not None and all(a.same_as(b) for a, b in zip(found, expected, strict=True))


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
