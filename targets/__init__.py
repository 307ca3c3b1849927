"""Lowering, building, running and measuring; importing registers the targets and backends."""

from __future__ import annotations

from pathlib import Path

from compressor.errors import ConfigError
from compressor.registry import BACKENDS, TARGETS
from compressor.state import State
from targets import cpu, onnxruntime, tvm  # noqa: F401  (register)
from targets.base import Compiled, Target
from targets.measure import Latency, measure
from targets.verify import Verification, verify

__all__ = ["Compiled", "Latency", "Target", "Verification", "backends_for", "lower", "measure", "verify"]


def backends_for(target: str, backend: str = "default") -> list[str]:
    """The backends to build for ``target``: one name, ``default`` (the target's defaults) or ``all``."""
    usable = TARGETS.get(target).backends
    if backend == "all":
        return list(usable)
    if backend == "default":
        return list(TARGETS.get(target).defaults)
    BACKENDS.get(backend)  # unknown names list the known ones
    if backend not in usable:
        raise ConfigError(
            f"backend {backend!r} is not available for target {target!r}; available: {', '.join(usable)}"
        )
    return [backend]


def lower(state: State, target: str, backend: str | None, out_dir: str | Path) -> Compiled:
    """Build ``state.module`` for ``target`` into ``out_dir`` (not yet verified).

    ``backend=None`` takes the target's preferred backend.
    """
    name = backends_for(target, backend)[0] if backend else backends_for(target)[0]
    tgt = TARGETS.get(target)
    artifact, runner = BACKENDS.get(name)().build(state, tgt, Path(out_dir))
    return Compiled(target=tgt, backend=name, artifact=artifact, runner=runner, state=state)
