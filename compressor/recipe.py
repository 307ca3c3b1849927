"""Recipes: a pipeline written as YAML, one pass per list entry.

```yaml
- magnitude-prune: {sparsity: 0.9, scope: layer}
- pipeline:                 # pipelines nest
  - magnitude-prune: {sparsity: 0.95}
```
An entry is a pass name, or a one-key mapping from the name to its arguments (arguments left
out take the pass's defaults). YAML flow style fits on a command line:
``--recipe "[magnitude-prune: {sparsity: 0.9}]"``. ``parse(format_recipe(p)) == p``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import ConfigError
from compressor.pipeline import Pass, Pipeline
from compressor.registry import PASSES

_EXAMPLE = "expected a YAML list such as '[magnitude-prune: {sparsity: 0.9}]'"


def parse(text: str) -> Pipeline:
    """Read a recipe from YAML text; unknown passes and arguments raise ``ConfigError``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(f"malformed recipe ({problem}); {_EXAMPLE}") from None
    if isinstance(doc, (str, dict)):
        doc = [doc]
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f"malformed recipe: {_EXAMPLE}")
    return Pipeline(_build(entry) for entry in doc)


def load_recipe(file_or_text: str) -> Pipeline:
    """``--recipe`` takes a file path or the recipe text itself."""
    path = Path(file_or_text)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        try:
            return parse(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read recipe file {file_or_text!r}: {e.strerror}") from None
    return parse(file_or_text)


def _build(entry: Any) -> Pass:
    if isinstance(entry, str):
        name, args = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, args = next(iter(entry.items()))
    else:
        raise ConfigError(f"malformed recipe entry {entry!r}: {_EXAMPLE}")
    cls = PASSES.get(str(name))
    if cls is Pipeline:
        if not isinstance(args, list):
            raise ConfigError("malformed recipe: 'pipeline' takes a list of passes")
        return Pipeline(_build(e) for e in args)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(f"malformed recipe: arguments of {name!r} must be a mapping, got {args!r}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(unknown)} for pass {name!r}; "
            f"it takes: {', '.join(known) or 'no arguments'}"
        )
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad arguments for pass {name!r}: {e}") from None


PASSES.register(Pipeline.name)(Pipeline)
