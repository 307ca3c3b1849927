"""Fresh inputs for a model: what verification and the model checks run besides its example.

Floating-point inputs are drawn from a normal distribution (a recurrent state among them: a
zero state would let a compiler fold the recurrent matmul away). Integer inputs that index an
embedding are drawn over its whole table — token ids over the vocabulary — found by watching
one forward pass; other integer inputs (masks, lengths) stay within the example's range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compressor.state import set_eval

INDEXING = (torch.ops.aten.embedding.default, torch.ops.aten.embedding_bag.default)
"""Ops whose second argument indexes the rows of their first."""


class _Indexing(TorchDispatchMode):
    """Records, for each integer input, the smallest table it indexes directly."""

    def __init__(self, inputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.inputs = {
            t.data_ptr(): i for i, t in enumerate(inputs) if not t.is_floating_point() and t.numel()
        }
        self.rows: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in INDEXING:
            table, indices = args[0], args[1]
            which = self.inputs.get(indices.data_ptr())
            if which is not None:
                self.rows[which] = min(self.rows.get(which, table.shape[0]), int(table.shape[0]))
        return func(*args, **(kwargs or {}))


def input_ranges(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[tuple[int, int] | None]:
    """Per input, ``[low, high)`` of the integers it may hold (None for floating-point inputs):
    the embedding table it indexes, else the example's own range."""
    watch = _Indexing(example)
    if watch.inputs:
        set_eval(module)
        with torch.no_grad(), watch:
            module(*example)
    ranges: list[tuple[int, int] | None] = []
    for i, t in enumerate(example):
        if t.is_floating_point():
            ranges.append(None)
        elif i in watch.rows:
            ranges.append((0, watch.rows[i]))
        else:
            ranges.append((int(t.min()), int(t.max()) + 1) if t.numel() else (0, 1))
    return ranges


def fresh_inputs(
    example: tuple[torch.Tensor, ...],
    generator: torch.Generator,
    ranges: list[tuple[int, int] | None] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like ``example``: normal floats, integers within ``ranges``."""
    out = []
    for i, t in enumerate(example):
        if t.is_floating_point():
            out.append(torch.randn(t.shape, generator=generator).to(t.dtype))
            continue
        low, high = ranges[i] if ranges and ranges[i] else (int(t.min()), int(t.max()) + 1)
        out.append(torch.randint(low, high, t.shape, generator=generator, dtype=t.dtype))
    return tuple(out)


def trial_inputs(
    module: nn.Module, example: tuple[torch.Tensor, ...], trials: int = 3, seed: int = 0
) -> list[tuple[torch.Tensor, ...]]:
    """``example``, then ``trials`` fresh random inputs (the same for the same ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    ranges = input_ranges(module, example)
    return [example] + [fresh_inputs(example, generator, ranges) for _ in range(trials)]
