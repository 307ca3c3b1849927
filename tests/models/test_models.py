"""The example models: data splits, encodings, shapes, and lowering of every architecture."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor import load_model, load_task
from models.digits import digits_splits
from models.text import VOCAB, char_splits, decode, encode, stdlib_files
from models.train_lm import DATA_FILE, unigram_perplexity, write_lm
from targets import lower

SMALL = {"train": 20_000, "val": 5_000, "test": 5_000}


def test_stdlib_split_is_deterministic_and_disjoint() -> None:
    first, second = stdlib_files(), stdlib_files()
    assert first == second
    sets = [set(first[s]) for s in ("train", "val", "test")]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert 0.02 < len(sets[1]) / sum(map(len, sets)) < 0.09  # about 1 in 20 files
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [p.relative_to(root).as_posix() for s in sets for p in s]
    assert not [n for n in names if "site-packages/" in n or "sysconfigdata" in n or n.startswith("config-")]


def test_windows_are_shifted_by_one_and_reproducible() -> None:
    data = char_splits(seq_len=16, max_bytes=SMALL)
    again = char_splits(seq_len=16, max_bytes=SMALL)
    for key, value in data.items():
        assert value.dtype == np.int64 and np.array_equal(value, again[key])
        assert value.shape[1] == 16 and value.max() < VOCAB
    x, y = data["x_train"], data["y_train"]
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert len(x) == SMALL["train"] // 17


def test_encoding_round_trips_printable_ascii() -> None:
    text = "\t\n" + "".join(map(chr, range(32, 127)))
    assert decode(encode(text.encode())) == text
    assert len(set(encode(text.encode()).tolist())) == len(text) == VOCAB - 1
    assert encode("é".encode()).tolist() == [VOCAB - 1, VOCAB - 1]


@pytest.mark.parametrize("layout, shape", [("flat", (64,)), ("sequence", (8, 8)), ("image", (1, 8, 8))])
def test_digits_layouts(layout: str, shape: tuple[int, ...]) -> None:
    data = digits_splits(layout)
    assert data["x_train"].shape == (1257, *shape) and data["x_test"].shape == (270, *shape)
    assert np.array_equal(data["y_val"], digits_splits("flat")["y_val"])


def test_unigram_baseline_is_below_uniform() -> None:
    data = char_splits(seq_len=16, max_bytes=SMALL)
    assert 10.0 < unigram_perplexity(data) < VOCAB  # Python source is far from uniform


@pytest.mark.parametrize("arch", ["char-lstm", "char-gru"])
def test_language_model_from_the_training_script_lowers_and_verifies(arch: str, tmp_path: Path) -> None:
    data = char_splits(seq_len=12, max_bytes=SMALL)
    config = {"vocab": VOCAB, "embed": 8, "hidden": 24, "layers": 2}
    module, perplexity = write_lm(arch, config, data, tmp_path, steps=30, batch_size=16, lr=1e-2)
    assert perplexity < VOCAB / 2  # a few steps learn the character frequencies
    assert module(torch.from_numpy(data["x_val"][:3])).shape == (3, 12, VOCAB)
    state = load_model(tmp_path / f"{arch.replace('-', '_')}.pt")
    assert torch.equal(state.example_inputs[0], torch.from_numpy(data["x_val"][:1]))
    assert lower(state, "cpu", "onnxruntime", tmp_path / "cpu").verify().max_abs_error < 1e-4
    task = load_task(tmp_path / DATA_FILE)  # what ``compress --data`` reads
    assert task.metric == "perplexity"
    assert task.evaluate(state.module) == pytest.approx(perplexity, rel=1e-4)


def test_lenet5_checkpoint_from_the_training_script(zoo: Path, tmp_path: Path) -> None:
    state = load_model(zoo / "lenet5.pt")
    assert state.example_inputs[0].shape == (1, 1, 8, 8)
    assert load_task(zoo / "digits_img.npz").evaluate(state.module) > 95.0  # accuracy in percent
    assert lower(state, "cpu", "onnxruntime", tmp_path / "cpu").verify().max_abs_error < 1e-4
    assert set(load_model(zoo / "lenet5_prune.pt").masks) == {
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc2.weight",
        "fc3.weight",
    }
