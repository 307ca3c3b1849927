"""Where the tool keeps what outlives a run: kernel decisions, the emulated device, logs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$COMPRESSOR_CACHE``, else ``$XDG_CACHE_HOME/compressor`` or ``~/.cache/compressor``."""
    root = os.environ.get("COMPRESSOR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressor"
