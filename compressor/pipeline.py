"""The pass protocol and the pipeline, which is itself a pass.

A pass is anything with a ``name`` and an ``apply(state, ctx) -> PassResult`` (LLVM's new pass
manager: no base class to inherit). The pipeline times each pass and records parameters,
nonzeros, sparsity and the task metric after it; instruments observe every pass from outside.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import yaml

from compressor.checks import model_problem
from compressor.errors import CompressorError, ModelLoadError, PassError
from compressor.state import PassRecord, State


@dataclass(frozen=True)
class PassResult:
    """A pass's new state and what it changed (for the report), e.g. per-layer sparsity."""

    state: State
    changes: Mapping[str, Any] = field(default_factory=dict)


class Instrument(Protocol):
    """Hooks run around every pass (progress display, dumps), never inside a pass."""

    def before_pass(self, name: str, state: State) -> None: ...

    def after_pass(self, name: str, state: State, record: PassRecord) -> None: ...


class Progress(Protocol):
    """A progress bar a pass may drive; the CLI draws it, the default draws nothing."""

    def update(self, advance: int = 1, **info: float) -> None: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, advance: int = 1, **info: float) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(description: str, total: int) -> Progress:
    return _NoProgress()


@dataclass(frozen=True)
class PassContext:
    """Settings shared by all passes of one run."""

    seed: int = 0
    instruments: tuple[Instrument, ...] = ()
    progress: Callable[[str, int], Progress] = no_progress


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]

    def apply(self, state: State, ctx: PassContext) -> PassResult: ...


def record(name: str, seconds: float, state: State, changes: Mapping[str, Any]) -> PassRecord:
    stats = state.stats()
    return PassRecord(
        name=name,
        seconds=round(seconds, 4),
        params=stats.params,
        nonzeros=stats.nonzeros,
        sparsity=round(stats.sparsity, 6),
        metric=state.evaluate(),
        changes=dict(changes),
    )


@dataclass(frozen=True, init=False)
class Pipeline:
    """Runs passes in order; ``str(pipeline)`` is its recipe and ``recipe.parse`` reads it back."""

    name: ClassVar[str] = "pipeline"
    passes: tuple[Pass, ...]

    def __init__(self, passes: Iterable[Pass]) -> None:
        object.__setattr__(self, "passes", tuple(passes))

    def apply(self, state: State, ctx: PassContext) -> PassResult:
        ran: list[str] = []
        varying = first_check(state, ctx.seed)
        for p in self.passes:
            for instrument in ctx.instruments:
                instrument.before_pass(p.name, state)
            start = time.perf_counter()
            try:
                result = p.apply(state, ctx)
            except CompressorError as e:
                raise type(e)(f"{_where(p.name, ran)}: {e}") from e
            except Exception as e:  # a bug or a model the pass cannot handle: name the pass
                raise PassError(f"{_where(p.name, ran)}: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - start
            problem, varying = model_problem(result.state, varying, ctx.seed)
            if problem:
                raise PassError(f"{_where(p.name, ran, 'broke the model')}: {problem.text}; {problem.fix}")
            rec = record(p.name, seconds, result.state, result.changes)
            state = result.state.replace(history=(*result.state.history, rec))
            for instrument in ctx.instruments:
                instrument.after_pass(p.name, state, rec)
            ran.append(p.name)
        return PassResult(state, {"passes": ran})

    def run(self, state: State, ctx: PassContext | None = None) -> State:
        """Apply the pipeline and return the final state (``history`` holds the records)."""
        return self.apply(state, ctx or PassContext()).state

    def __str__(self) -> str:
        return format_recipe(self)


def first_check(state: State, seed: int) -> list[bool]:
    """Which outputs vary with the input before any pass; non-finite outputs are the model's own."""
    problem, varying = model_problem(state, None, seed)
    if problem:
        raise ModelLoadError(
            f"{problem.text}; fix the model before compressing it (verification runs it on such inputs)"
        )
    return varying


def _where(name: str, ran: list[str], verb: str = "failed") -> str:
    before = f" after [{', '.join(ran)}]" if ran else " (first pass)"
    return f"pass {name!r} {verb}{before}"


def format_recipe(pipeline: Pipeline, indent: str = "") -> str:
    """One line per pass, arguments in YAML flow style; nested pipelines indented."""
    lines = []
    for p in pipeline.passes:
        if isinstance(p, Pipeline):
            lines.append(f"{indent}- {Pipeline.name}:\n{format_recipe(p, indent + '  ')}")
            continue
        args = {
            f.name: _plain(getattr(p, f.name))
            for f in dataclasses.fields(p)
            if f.init and getattr(p, f.name) != _default(f)
        }
        flow = yaml.safe_dump(args, default_flow_style=True, sort_keys=False, width=1 << 16).strip()
        lines.append(f"{indent}- {p.name}: {flow}\n" if args else f"{indent}- {p.name}\n")
    return "".join(lines)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    """YAML-safe form of a pass argument (tuples become lists, mappings plain dicts)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
