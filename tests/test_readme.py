"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_api_example(monkeypatch, capsys) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "- magnitude-prune: {sparsity: 0.8, scope: layer}" in out
    assert re.search(r"Verification\(trials=4, max_abs_error=[0-9.e-]+", out)
    assert re.search(r"Latency\(median=[0-9.]+", out)
