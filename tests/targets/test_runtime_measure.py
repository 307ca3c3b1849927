from __future__ import annotations

from targets.runtime.measure import measure


def test_interleaved_samples_and_counts() -> None:
    calls: list[str] = []
    result = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 10, 0.0)
    assert set(result) == {"a", "b"}
    for name, latency in result.items():
        assert latency.samples == 10
        assert latency.runs == calls.count(name) - 4  # 4 warm-up/calibration calls each
        assert 0 <= latency.p10 <= latency.median <= latency.p90
    # Samples alternate between the callables: neither runs all its samples first.
    first_b = calls.index("b")
    assert calls[first_b:].count("a") >= 9 * result["a"].runs // 10
