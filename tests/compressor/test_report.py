"""The report's comparisons and the choice of the backend to ship, on known figures."""

from __future__ import annotations

from compressor.report import add_comparisons, choose


def entry(backend: str, ms: float | None, dense_ms: float | None, target: str = "cpu") -> dict:
    latency = {"median": ms} if ms is not None else None
    dense = {"median": dense_ms} if dense_ms is not None else None
    return {
        "target": target,
        "backend": backend,
        "artifact": f"{target}-{backend}/model",
        "verified": True,
        "latency_ms": latency,
        "dense_latency_ms": dense,
        "speedup_vs_best_dense": None,
    }


def test_each_backend_is_compared_with_the_fastest_unpruned_model_of_its_target() -> None:
    entries = [entry("onnxruntime", 2.0, 2.0), entry("tvm", 1.0, 4.0), entry("tvm", 3.0, 0.5, target="arm64")]
    add_comparisons(entries)
    assert [e["speedup_vs_best_dense"] for e in entries] == [1.0, 2.0, 0.1667]


def test_the_fastest_verified_backend_is_chosen_and_the_report_says_why() -> None:
    entries = [entry("onnxruntime", 2.0, 2.0), entry("tvm", 1.0, 4.0)]
    chosen = choose(entries)["cpu"]
    assert chosen == {
        "backend": "tvm",
        "artifact": "cpu-tvm/model",
        "why": "the fastest verified: 1 ms (vs onnxruntime 2 ms)",
    }
    entries[1]["latency_ms"]["median"] = 3.0  # now ONNX Runtime wins: it ships
    assert choose(entries)["cpu"]["backend"] == "onnxruntime"


def test_without_timings_the_preferred_backend_ships_and_the_reason_is_true() -> None:
    untimed = [entry("onnxruntime", None, None), entry("tvm", None, None)]
    assert choose(untimed, measured=False)["cpu"]["why"].startswith("not timed (--no-measure)")
    assert "none could be timed" in choose(untimed, measured=True)["cpu"]["why"]
    assert choose(untimed)["cpu"]["backend"] == "onnxruntime"
    partly = [entry("onnxruntime", None, None), entry("tvm", 5.0, 1.0)]  # ORT could not be timed
    assert choose(partly)["cpu"] == {
        "backend": "tvm",
        "artifact": "cpu-tvm/model",
        "why": "the fastest verified: 5 ms (vs onnxruntime not timed)",
    }
    unverified = [{**entry("tvm", 0.1, 1.0), "verified": False}]
    assert choose(unverified) == {}
