"""Helpers shared by the pruning passes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from typing import TypeVar

from torch import nn

from compressor.errors import ConfigError
from compressor.state import prunable_weights

T = TypeVar("T")


def check_sparsity(value: object, what: str = "sparsity") -> float:
    """A sparsity is a fraction of zeros in [0, 1): 1.0 would remove every weight."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1), e.g. 0.9 for 90% zeros; got {value!r}")
    return float(value)


def select_weights(module: nn.Module, layers: Sequence[str]) -> dict[str, nn.Parameter]:
    """Prunable weights (matrices, kernels) whose fqn matches one of the glob patterns (or all)."""
    weights = {
        fqn: w
        for fqn, w in prunable_weights(module).items()
        if not layers or any(fnmatch(fqn, pattern) for pattern in layers)
    }
    if not weights:
        raise ConfigError(
            f"no prunable weights match layers={list(layers)}; the model's weights are: "
            f"{', '.join(prunable_weights(module))}"
        )
    return weights


def matching(fqn: str, by_pattern: Mapping[str, T]) -> T | None:
    """The value of the first glob pattern matching ``fqn``."""
    for pattern, value in by_pattern.items():
        if fnmatch(fqn, pattern):
            return value
    return None


def check_selection(spec: object) -> None:
    """Validate a pass's ``granularity`` and freeze its ``layers`` patterns into a tuple."""
    from passes.granularity import Granularity

    Granularity.parse(spec.granularity)  # type: ignore[attr-defined]
    object.__setattr__(spec, "layers", tuple(spec.layers))  # type: ignore[attr-defined]
