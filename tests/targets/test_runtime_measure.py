"""Timing: each model alone in a fresh worker process per turn, the models taking turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from targets.runtime.measure import Factory, Turn, WorkerError, measure, measure_turns

FACTORIES = str(Path(__file__).with_name("timing_factories.py"))


def test_turns_rotate_and_each_runs_in_a_process_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "turns.log"
    factories = {name: Factory(FACTORIES, "logged", (name, str(log), 0.001)) for name in ("a", "b")}
    result = measure(factories, turns=3, min_samples=6, min_seconds=0.03)
    turns = [line.split() for line in log.read_text().splitlines()]
    assert [name for name, _ in turns] == ["a", "b", "a", "b", "a", "b"]
    assert len({pid for _, pid in turns}) == 6  # a fresh process every turn
    for latency in result.values():
        assert len(latency.turn_medians) == 3 and latency.samples >= 6
        assert latency.runs >= latency.samples
        assert 1.0 <= latency.p10 <= latency.median <= latency.p90  # each call sleeps 1 ms


def test_the_rotation_pools_every_turns_samples() -> None:
    given = {"a": [Turn((0.001, 0.003), 2), Turn((0.002,), 2)], "b": [Turn((0.010,), 1), Turn((0.030,), 1)]}
    asked: list[tuple[str, int | None]] = []

    def turner(name: str):
        def take(seconds: float, min_samples: int, number: int | None) -> Turn:
            asked.append((name, number))
            return given[name][len([a for a in asked if a[0] == name]) - 1]

        return take

    result = measure_turns({"a": turner("a"), "b": turner("b")}, turns=2, min_samples=2, min_seconds=0.0)
    # The first turn calibrates; later ones keep its runs per sample.
    assert asked == [("a", None), ("b", None), ("a", 2), ("b", 1)]
    assert result["a"].median == 2.0 and result["a"].samples == 3 and result["a"].runs == 6
    assert result["a"].turn_medians == (2.0, 2.0)
    assert result["b"].median == 20.0 and result["b"].turn_medians == (10.0, 30.0)


def test_a_failing_worker_says_why() -> None:
    with pytest.raises(WorkerError, match="RuntimeError: the artifact cannot load here"):
        measure({"x": Factory(FACTORIES, "broken")}, turns=1, min_samples=1, min_seconds=0.0)


def test_the_worker_keeps_torch_out_unless_asked() -> None:
    with pytest.raises(WorkerError, match="torch"):
        measure({"x": Factory(FACTORIES, "uses_torch")}, turns=1, min_samples=1, min_seconds=0.0)
    result = measure(
        {"x": Factory(FACTORIES, "uses_torch", torch=True)}, turns=1, min_samples=1, min_seconds=0.0
    )
    assert result["x"].samples >= 1
