"""The state every pass reads and returns: a module, its explicit masks, inputs and task."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    """What a state needs of its task (``compressor.data.Task``: data, loss and metric)."""

    metric: str

    def evaluate(self, module: nn.Module, split: str = "val", batch_size: int = 512) -> float: ...


def prunable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """The weights pruning may touch, keyed by fully qualified name (fqn).

    Matrices and kernels (``dim() >= 2``: Linear, Conv, Embedding and the ``weight_ih``/
    ``weight_hh`` of recurrent layers). Biases and normalisation parameters are vectors and are
    never pruned (Han 2015, Narang 2017). The rule reads shapes, not module types, so it also
    holds for the graph modules that ``torch.export`` archives load as.
    """
    return {fqn: p for fqn, p in module.named_parameters() if p.dim() >= 2}


def set_train(module: nn.Module, mode: bool = True) -> None:
    """Put ``module`` in training (or eval) mode; modules loaded from ``torch.export`` archives
    keep the mode they were exported in (they refuse ``train()``/``eval()``)."""
    with contextlib.suppress(NotImplementedError):
        module.train(mode)


def set_eval(module: nn.Module) -> None:
    set_train(module, False)


def apply_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out entry of ``module``'s parameters in place."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for fqn, mask in masks.items():
            params[fqn].mul_(mask.to(params[fqn].dtype))


@dataclass(frozen=True)
class Stats:
    """Counts over all parameters of a module."""

    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @staticmethod
    def of(module: nn.Module) -> Stats:
        params = nonzeros = 0
        for p in module.parameters():
            params += p.numel()
            nonzeros += int(torch.count_nonzero(p))
        return Stats(params, nonzeros)


def layer_sparsity(module: nn.Module) -> dict[str, float]:
    """Fraction of zeros of each prunable weight, by fqn."""
    return {
        fqn: round(1.0 - int(torch.count_nonzero(p)) / p.numel(), 6)
        for fqn, p in prunable_weights(module).items()
    }


@dataclass(frozen=True)
class PassRecord:
    """What the pipeline recorded after one pass ran."""

    name: str
    seconds: float
    params: int
    nonzeros: int
    sparsity: float
    metric: float | None
    changes: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record for report.json; plot data stays out (``--plot`` renders it)."""
        out = dataclasses.asdict(self)
        out["changes"] = {k: v for k, v in out["changes"].items() if k != "plots"}
        return out


@dataclass(frozen=True)
class State:
    """A model under compression.

    ``masks`` maps the fqn of a pruned parameter to a bool tensor of its shape (True = kept);
    masked-out entries are zero in ``module``. ``example_inputs`` are the positional inputs
    ``module`` is exported and verified with. ``task`` (data, loss, metric) is optional.
    """

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    task: Task | None = None
    history: tuple[PassRecord, ...] = ()

    def replace(self, **changes: Any) -> State:
        return dataclasses.replace(self, **changes)

    def clone(self) -> State:
        """A copy whose module and masks may be changed without touching this state."""
        return self.replace(
            module=copy.deepcopy(self.module),
            masks={fqn: m.clone() for fqn, m in self.masks.items()},
        )

    def stats(self) -> Stats:
        return Stats.of(self.module)

    def evaluate(self) -> float | None:
        """The task's metric on the validation split, or None without a task."""
        return None if self.task is None else self.task.evaluate(self.module)

    def reference_outputs(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Outputs of the torch module (eval mode), flattened to a list of tensors."""
        set_eval(self.module)
        with torch.no_grad():
            out = self.module(*inputs)
        return flatten_outputs(out)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a (possibly nested) model output in the order exporters emit them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, Mapping):
        return [t for o in out.values() for t in flatten_outputs(o)]
    raise TypeError(f"model output of type {type(out).__name__} is not a tensor or tuple of them")
