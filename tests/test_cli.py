"""The ``compress`` command: the README demo, the report contract and bad inputs."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.cli import main
from compressor.errors import LoweringError

REPORT_KEYS = {
    "params_before",
    "params_after",
    "nonzero_after",
    "sparsity",
    "metric_before",
    "metric_after",
    "passes",
    "targets",
}
PASS_KEYS = {"name", "seconds", "sparsity", "params", "metric"}
TARGET_KEYS = {
    "target",
    "backend",
    "artifact",
    "verified",
    "max_abs_error",
    "latency_ms",
    "dense_latency_ms",
    "speedup",
    "speedup_vs_best_dense",
    "emulated",
    "kernels",
}


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["compress", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_demo_writes_a_verified_measured_report(zoo: Path, tmp_path: Path) -> None:
    """The README's LeNet example, through the installed console script: the default pipeline
    with data retrains while pruning, removes dead neurons, builds both backends and ships one."""
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("compress")),
            str(zoo / "lenet300.pt"),
            "--sparsity",
            "0.9",
            "--data",
            str(zoo / "digits.npz"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "cpu/onnxruntime" in result.stdout and "cpu/tvm" in result.stdout
    assert re.search(r"chosen for cpu: (onnxruntime|tvm) \(cpu-", result.stdout)
    # Only the tool's own lines on stderr: each starts with its mark.
    assert all(line[:1] in "✓!" or line.startswith("  ") for line in result.stderr.splitlines()), (
        result.stderr
    )
    report = json.loads((out / "report.json").read_text())
    assert report.keys() >= REPORT_KEYS | {"chosen", "skipped", "peak_rss_bytes", "run"}
    assert [p["name"] for p in report["passes"]] == ["gradual-prune", "remove-dead-neurons"]
    assert report["params_before"] == 50_610 and report["params_after"] <= 50_610
    assert 0.85 < report["sparsity"] < 0.9
    assert report["metric_before"] > 90.0 and report["metric_after"] > 90.0  # retrained, not one-shot
    assert all(p.keys() >= PASS_KEYS for p in report["passes"])
    assert [e["backend"] for e in report["targets"]] == ["onnxruntime", "tvm"] and report["skipped"] == []
    for entry in report["targets"]:
        assert entry.keys() >= TARGET_KEYS
        assert entry["verified"] is True and entry["max_abs_error"] < 1e-4 and entry["emulated"] is False
        for key in ("latency_ms", "dense_latency_ms"):
            assert (
                entry[key]["runs"] >= 30 and entry[key]["median"] > 0 and len(entry[key]["turn_medians"]) == 3
            )
        assert (out / entry["artifact"]).is_file()
        assert entry["build_s"] > 0 and entry["dense_build_s"] > 0
    fastest = min(report["targets"], key=lambda e: e["latency_ms"]["median"])
    assert report["chosen"]["cpu"]["backend"] == fastest["backend"]
    assert report["run"] in (out / ".compress-output").read_text() and (out / "log.txt").is_file()
    assert 0 < report["peak_rss_bytes"] < 8 << 30
    reloaded = torch.export.load(out / "model.pt2").module()
    nonzeros = sum(int(torch.count_nonzero(p)) for p in reloaded.parameters())
    assert nonzeros == report["nonzero_after"]


def test_lstm_with_last_step_indexing_verifies(zoo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        str(zoo / "lstm.pt"),
        "--sparsity",
        "0.8",
        "--no-measure",
        "--json",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0
    report = json.loads(out)
    assert [e["backend"] for e in report["targets"]] == ["onnxruntime", "tvm"]  # auto: both
    for entry in report["targets"]:
        assert entry["verified"] is True and entry["max_abs_error"] < 1e-4
        assert entry["latency_ms"] is None and entry["speedup"] is None
    # Nothing timed: the target's preferred backend is shipped, and the report says why.
    assert report["chosen"]["cpu"]["backend"] == "onnxruntime"
    assert "not timed" in report["chosen"]["cpu"]["why"]


def test_all_backends_report_kernels_and_the_best_dense_model(
    zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        str(zoo / "lstm.pt"),
        "--sparsity",
        "0.9",
        "--backend",
        "all",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, out
    assert "cpu/tvm kernels" in out and "lstm.weight_hh_l0" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    ort, tvm = report["targets"]
    assert (ort["backend"], tvm["backend"]) == ("onnxruntime", "tvm")
    assert ort["kernels"] is None
    names = {k["name"]: k for k in tvm["kernels"]}
    assert set(names) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.weight"}
    hh = names["lstm.weight_hh_l0"]
    # the 8 steps in one call of the LSTM kernel, chosen among its timed candidates
    assert hh["calls"] == 1 and hh["shape"] == [512, 128] and hh["format"].startswith("lstm-layer+")
    assert hh["format"] in hh["times_ms"] and len(hh["times_ms"]) >= 2
    fc = names["fc.weight"]
    assert fc["calls"] == 1 and fc["format"] in fc["times_ms"] and len(fc["times_ms"]) > 5  # every candidate


def test_auto_skips_a_backend_that_cannot_lower_and_ships_another(
    zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """With --backend auto a backend that fails is left out with its reason, its folder removed;
    asked for by name (or with all), the failure fails the run."""
    import targets.tvm

    def broken(*args: object, **kwargs: object) -> None:
        raise LoweringError("TVM lowering failed (the test broke it)")

    monkeypatch.setattr(targets.tvm.TvmBackend, "build", broken)
    args = (str(zoo / "lenet300.pt"), "--sparsity", "0.5", "--no-measure")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", str(tmp_path / "auto"))
    assert code == 0, err
    report = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert [e["backend"] for e in report["targets"]] == ["onnxruntime"]
    assert report["skipped"] == [
        {
            "target": "cpu",
            "backend": "tvm",
            "reason": "TVM lowering failed (the test broke it)",
            "kept": False,
        }
    ]
    assert report["chosen"]["cpu"]["backend"] == "onnxruntime"
    assert not (tmp_path / "auto" / "cpu-tvm").exists()
    for strict in ("all", "tvm"):
        code, _, err = run_cli(
            monkeypatch, capsys, *args, "--backend", strict, "--out", str(tmp_path / strict)
        )
        assert code == 1 and "TVM lowering failed" in err and not (tmp_path / strict).exists()


def test_recipe_and_default_output_folder(zoo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    model = tmp_path / "m.pt2"
    shutil.copy(zoo / "lenet300.pt2", model)
    recipe = "[magnitude-prune: {sparsity: 0.7, scope: layer}]"
    code, _, err = run_cli(monkeypatch, capsys, str(model), "--recipe", recipe, "--no-measure")
    assert code == 0, err
    report = json.loads((tmp_path / "m-compressed" / "report.json").read_text())
    assert set(report["layer_sparsity"].values()) == {0.7}
    assert report["recipe"] == "- magnitude-prune: {sparsity: 0.7, scope: layer}\n"
    # A second good run replaces the first.
    code, _, err = run_cli(monkeypatch, capsys, str(model), "--sparsity", "0.2", "--no-measure")
    assert code == 0, err
    report = json.loads((tmp_path / "m-compressed" / "report.json").read_text())
    assert report["recipe"] == "- magnitude-prune: {sparsity: 0.2}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-compressed", "m.pt2"]


def test_a_layer_global_pruning_would_empty_is_capped_and_named(
    zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """fc3's weights scaled down 1000x: one global ranking at 90% would zero all of them."""
    from compressor import load_model, save_checkpoint

    state = load_model(zoo / "lenet300.pt")
    with torch.no_grad():
        state.module.fc3.weight.mul_(1e-3)
    model = tmp_path / "small_fc3.pt"
    save_checkpoint(model, "lenet-300-100", {}, state.module, state.example_inputs)
    out = tmp_path / "out"
    args = (str(model), "--sparsity", "0.9", "--backend", "onnxruntime", "--no-measure", "--out", str(out))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert re.search(r"capped at 99% \(the rest of their share went to other layers\): fc3\.weight", err), err
    report = json.loads((out / "report.json").read_text())
    assert 0.98 <= report["layer_sparsity"]["fc3.weight"] <= 0.99
    assert report["sparsity"] > 0.85  # fc3's share went to fc1 and fc2


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PAYLOAD_MARKER']}",))


BAD = {
    "missing file": ([], "does not exist", "missing"),
    "truncated file": ([], "truncated, corrupt", "truncated"),
    "random bytes": ([], "truncated, corrupt", "random"),
    "pickled module": ([], "--trust-pickle", "pickled"),
    "NaN weight": (
        [],
        r"output 0 on its example input is not finite \(parameter fc2\.weight holds NaN",
        "nan",
    ),
    "inf bias": ([], r"not finite \(parameter fc1\.bias holds inf", "inf"),
    "sparsity 1.5": (["--sparsity", "1.5"], r"--sparsity must be a number in \[0, 1\)", None),
    "sparsity -0.1": (["--sparsity", "-0.1"], r"--sparsity must be a number in \[0, 1\)", None),
    "unknown target": (["--target", "tpu"], "unknown target 'tpu'; known targets are: arm64, cpu", None),
    "unknown backend": (["--backend", "tensorrt"], "unknown backend 'tensorrt'", None),
    "unknown recipe pass": (["--recipe", "[shrink-it]"], "unknown pass 'shrink-it'; known passes", None),
    "malformed recipe": (["--recipe", "[magnitude-prune: {sparsity: 0.9]"], "malformed recipe", None),
    "bad input shape": (["--input-shape", "1xbx8"], "bad --input-shape '1xbx8'", None),
    "input shape misfit": (["--input-shape", "1x5"], "--input-shape 1x5 does not fit the model", None),
    "recipe and sparsity": (["--recipe", "[magnitude-prune]", "--sparsity", "0.5"], "not both", None),
    "unknown option": (["--sparsty", "0.5"], "No such option '--sparsty'", None),
    "arm64 without a device": (["--target", "arm64"], "give --rpc HOST:PORT .* or --emulate", None),
    "rpc without arm64": (["--rpc", "phone:9090"], "--rpc is for targets that run on a device", None),
    "rpc and emulate": (["--target", "arm64", "--rpc", "a:1", "--emulate"], "not several", None),
    "tracker without key": (["--target", "arm64", "--tracker", "a:9190"], "--tracker and --key go", None),
    "emulate for cuda": (["--target", "cuda", "--emulate"], "--emulate is for the arm64 target", None),
    "bad rpc address": (["--target", "arm64", "--rpc", "phone"], "--rpc wants HOST:PORT, got 'phone'", None),
    "negative tune": (["--tune", "-1"], "Invalid value for '--tune': -1 is not in the range x>=0", None),
    "tune for arm64": (
        ["--target", "arm64", "--rpc", "a:1", "--tune", "8"],
        "--tune tunes on this host",
        None,
    ),
    "tune without tvm": (["--backend", "onnxruntime", "--tune", "8"], "--tune tunes TVM's functions", None),
}


NOT_USAGE = {"missing file", "truncated file", "random bytes", "pickled module", "NaN weight", "inf bias"}
"""Bad model files exit 1; every other case is a usage error (a bad option or name): exit 2."""


def poisoned(zoo: Path, path: Path, fqn: str, value: float) -> None:
    """The zoo's LeNet-300-100 with one entry of ``fqn`` set to ``value`` (a diverged training run)."""
    from compressor import load_model, save_checkpoint

    state = load_model(zoo / "lenet300.pt")
    with torch.no_grad():
        state.module.get_parameter(fqn).view(-1)[3] = value
    save_checkpoint(path, "lenet-300-100", {}, state.module, state.example_inputs)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case: str, zoo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    args, message, kind = BAD[case]
    model = tmp_path / "model.pt"
    good = (zoo / "lenet300.pt").read_bytes()
    marker = tmp_path / "payload-ran"
    if kind == "truncated":
        model.write_bytes(good[: len(good) // 3])
    elif kind == "random":
        model.write_bytes(os.urandom(10_000))
    elif kind == "pickled":
        monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
        model.write_bytes(pickle.dumps(Payload()))
    elif kind == "nan":
        poisoned(zoo, model, "fc2.weight", float("nan"))
    elif kind == "inf":
        poisoned(zoo, model, "fc1.bias", float("inf"))
    elif kind is None:
        model.write_bytes(good)
    code, out, err = run_cli(monkeypatch, capsys, str(model), "--no-measure", *args)
    assert code == (1 if case in NOT_USAGE else 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert out == ""
    assert not marker.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ([] if kind == "missing" else ["model.pt"])


@pytest.mark.parametrize("theirs", [["thesis.tex"], ["notes.txt", "report.json"]])
def test_out_that_is_not_ours_is_never_replaced(
    theirs: list[str], zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A folder of the user's is refused, even one holding a report.json like ours."""
    out = tmp_path / "precious"
    out.mkdir()
    for name in theirs:
        (out / name).write_text("keep me")
    code, _, err = run_cli(monkeypatch, capsys, str(zoo / "lenet300.pt"), "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "was not written by compress" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == theirs
    assert all((out / name).read_text() == "keep me" for name in theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]
