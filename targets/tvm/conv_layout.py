"""Where a convolution kernel stores its output: as it is, or — when the only reader is a
convolution of stride 1 or 2 whose input the kernel prepares (padded planes, split into the
stride's phases) — in that prepared layout, so that no copy is prepared between them."""

from __future__ import annotations

from typing import Any

from targets.tvm.conv_graph import conv_shape, is_op_call, use_counts, zero_padding
from targets.tvm.kernels.conv_cpu import ConvShape, Stored
from targets.tvm.rewrite import rewrite_main


def prepared_layout(shape: ConvShape, lanes: int) -> Stored:
    """The prepared input of a convolution as a ``Stored`` layout."""
    h2, w2 = shape.phase_size
    slack = shape.prepared_size(lanes) - shape.channels * shape.stride**2 * h2 * w2
    return Stored(*shape.padding, slack, shape.stride)  # type: ignore[misc]


def consumer_layout(root: Any, graph: tuple[dict, dict, dict], lanes: int) -> Stored | None:
    """The layout to store a chain's output ``root`` in when its only reader is a convolution of
    stride 1 or 2 whose input the kernel prepares (through an explicit zero ``pad`` read only by
    it, as TF-style models have); None otherwise. ``graph``: ``main``'s use counts, readers
    (``readers``) and each value's variable."""
    import tvm

    uses, reads, var_of = graph

    def only_reader(var: Any) -> Any:
        values = reads.get(var, [])
        return values[0] if uses.get(var, 0) == 1 and len(values) == 1 else None

    value, data, extra = only_reader(root), root, (0, 0, 0, 0)
    if is_op_call(value, "relax.nn.pad") and (padding := zero_padding(value)) is not None:
        data, extra, value = var_of.get(value), padding, only_reader(var_of.get(value))
    if not is_op_call(value, "relax.nn.conv2d") or not value.args[0].same_as(data):
        return None
    if not isinstance(value.args[1], tvm.ir.expr.Constant):
        return None
    shape = conv_shape(value, value.args[1].value.numpy(), root, extra)
    if shape is None or shape.flat(lanes).reads_input_as_is(lanes):
        return None
    # by phases of 2, the producer's tiles start at even columns and fit in its rows
    if shape.stride > 2 or (shape.stride == 2 and (shape.width % 2 or shape.width < lanes)):
        return None
    return prepared_layout(shape.flat(lanes), lanes)


def reuse_stored(mod: Any, stored_by: dict[str, Stored], prepared_as: dict[str, Stored]) -> Any:
    """``main`` with each preparation of a convolution's input that would copy the output of a
    kernel which stored it in that very layout (``stored_by``: by kernel symbol; the view of it
    as the output tensor is the preparation's only input) replaced by that output."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    values = relax.analysis.get_var2val(mod["main"])
    uses = use_counts(mod["main"])

    def source(var: Any, op: str) -> Any:
        value = values.get(var)
        return value.args[0] if uses.get(var, 0) == 1 and is_op_call(value, op) else None

    def rewriter(call: Any, _matches: dict) -> Any:
        gvar, args = call.args
        if not isinstance(gvar, relax.GlobalVar) or gvar.name_hint not in prepared_as:
            return call
        view = source(args.fields[0], "relax.strided_slice")  # the output's window in its planes
        grid = source(view, "relax.reshape") if view is not None else None
        if (moved := source(grid, "relax.permute_dims")) is not None:  # phase planes put in place
            grid = source(moved, "relax.reshape")
        stored = source(grid, "relax.strided_slice") if grid is not None else None
        kernel_call = values.get(stored) if stored is not None else None
        if not is_op_call(kernel_call, "relax.call_tir"):
            return call
        if stored_by.get(kernel_call.args[0].name_hint) != prepared_as[gvar.name_hint]:
            return call
        return stored

    return rewrite_main(mod, is_op("relax.call_tir")(wildcard(), wildcard()), rewriter)
