"""Lowering, building, running and measuring; importing registers the targets and backends."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path
from typing import Any

from compressor.errors import ConfigError
from compressor.registry import BACKENDS, TARGETS
from compressor.state import State
from targets import arm64, cpu, cuda, onnxruntime, tvm  # noqa: F401  (register)
from targets.base import Compiled, Target, measure_compiled
from targets.remote import LOCAL, Device
from targets.runtime.measure import Factory, Latency, measure
from targets.verify import Verification, verify

__all__ = [
    "LOCAL",
    "Compiled",
    "Device",
    "Factory",
    "Latency",
    "Target",
    "Verification",
    "backends_for",
    "lower",
    "measure",
    "measure_compiled",
    "verify",
]


def backends_for(target: str, backend: str = "auto") -> list[str]:
    """The backends to build for ``target``, in its order of preference: one by name, or every one
    it supports for ``auto`` and ``all``."""
    usable = TARGETS.get(target).backends
    if backend in ("auto", "all"):
        return list(usable)
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown backend {backend!r}; choose auto, all or one of: {', '.join(BACKENDS.names())}"
        )
    if backend not in usable:
        raise ConfigError(
            f"backend {backend!r} is not available for target {target!r}; available: {', '.join(usable)}"
        )
    return [backend]


def lower(
    state: State,
    target: str,
    backend: str | None,
    out_dir: str | Path,
    device: Device = LOCAL,
    options: dict[str, dict[str, Any]] | None = None,
) -> Compiled:
    """Build ``state.module`` for ``target`` into ``out_dir`` and load it on ``device`` (this host,
    or a session from ``targets.remote`` / ``targets.emulator``); not yet verified.

    ``backend=None`` takes the target's preferred backend; ``options``: keyword arguments of
    each backend's constructor, by name (``{"tvm": {"tune": 64}}``).
    """
    name = backends_for(target, backend)[0] if backend else backends_for(target)[0]
    tgt = TARGETS.get(target)
    if tgt.remote and device.session is None:
        raise ConfigError(
            f"target {target!r} runs on a device: give --rpc HOST:PORT, --tracker HOST:PORT --key KEY "
            "or --emulate (in Python, a device from targets.remote.connect or targets.emulator)"
        )
    backend_obj = BACKENDS.get(name)(**(options or {}).get(name, {}))
    artifact, runner = backend_obj.build(state, tgt, Path(out_dir), device)
    trim_memory()
    return Compiled(target=tgt, backend=name, artifact=artifact, runner=runner, state=state, device=device)


def trim_memory() -> None:
    """Give the memory a build freed back to the system. glibc keeps freed blocks in its heap, so
    the hundreds of MB of temporaries of lowering a large model would otherwise stay resident for
    the rest of the job, one build's worth after another."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
