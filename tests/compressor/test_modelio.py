from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

from compressor import ConfigError, ModelLoadError, load_model
from compressor.modelio import InputSpec, parse_input_shapes
from models.zoo import LeNet300


class Payload:
    """Unpickling this creates ``marker``: a stand-in for code hidden in a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_and_export_archive_load_the_same_model(zoo: Path) -> None:
    ckpt = load_model(zoo / "lenet300.pt")
    archive = load_model(zoo / "lenet300.pt2")
    assert isinstance(ckpt.module, LeNet300)
    assert ckpt.example_inputs[0].shape == archive.example_inputs[0].shape == (1, 64)
    x = torch.rand(1, 64)
    torch.testing.assert_close(archive.module(x), ckpt.module(x))
    assert ckpt.masks == archive.masks == {}


def test_pickled_module_is_refused_without_trust(zoo: Path) -> None:
    with pytest.raises(ModelLoadError, match="pickled nn.Module.*--trust-pickle"):
        load_model(zoo / "lenet300_pickled.pt")


def test_pickled_module_loads_with_trust_and_input_shape(zoo: Path) -> None:
    with pytest.raises(ConfigError, match="holds no example inputs; give --input-shape"):
        load_model(zoo / "lenet300_pickled.pt", trust_pickle=True)
    state = load_model(
        zoo / "lenet300_pickled.pt", trust_pickle=True, input_shapes=parse_input_shapes("2x64")
    )
    assert state.example_inputs[0].shape == (2, 64)


@pytest.mark.parametrize("legacy", [False, True], ids=["torch.save", "raw-pickle"])
def test_payload_never_runs(tmp_path: Path, legacy: bool) -> None:
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    if legacy:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    else:
        torch.save({"model": Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    assert not marker.exists()


def test_export_archive_with_pickled_payload_is_refused(zoo: Path, tmp_path: Path) -> None:
    """torch.export.load unpickles 'use_pickle' weights with code enabled: we check first."""
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt2"
    with zipfile.ZipFile(zoo / "lenet300.pt2") as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["fc1.weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            if item.filename.endswith("data/weights/weight_0"):
                data = pickle.dumps(Payload(marker))
            dst.writestr(item, data)
    with pytest.raises(ModelLoadError, match=r"pickled Python objects \(.*weight_0\).*--trust-pickle"):
        load_model(evil)
    assert not marker.exists()


def test_prune_reparametrisations_become_masks(zoo: Path, tmp_path: Path) -> None:
    state = load_model(zoo / "lenet300_prune.pt")
    assert set(state.masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for fqn, mask in state.masks.items():
        weight = state.module.get_parameter(fqn)
        assert mask.dtype == torch.bool and mask.float().mean() == pytest.approx(0.5, abs=0.01)
        assert torch.all(weight[~mask] == 0)
    # The same as a pickled module carrying the forward pre-hooks.
    module = LeNet300()
    prune.random_unstructured(module.fc2, "weight", amount=0.3)
    torch.save(module, tmp_path / "hooked.pt")
    loaded = load_model(tmp_path / "hooked.pt", trust_pickle=True, input_shapes=(InputSpec((1, 64)),))
    assert set(loaded.masks) == {"fc2.weight"}
    assert not loaded.module.fc2._forward_pre_hooks and "fc2.weight" in dict(loaded.module.named_parameters())
    torch.testing.assert_close(loaded.masks["fc2.weight"], module.fc2.weight_mask.bool())


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "truncated, corrupt or not a torch file"),
        (os.urandom(4096), "truncated, corrupt or not a torch file"),
        ("truncate:lenet300.pt", "truncated, corrupt or not a torch file"),
        ("truncate:lenet300.pt2", "truncated, corrupt or not a torch file"),
    ],
    ids=["missing", "empty", "random", "truncated-checkpoint", "truncated-archive"],
)
def test_unreadable_files(zoo: Path, tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "model.pt"
    if isinstance(content, str):
        data = (zoo / content.split(":")[1]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_bare_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save(LeNet300().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="weights without an architecture"):
        load_model(tmp_path / "sd.pt")


@pytest.mark.parametrize("text", ["", "1xax3", "0x4", "1x4:complex", "1x-4", "1,,2"])
def test_bad_input_shape(text: str) -> None:
    with pytest.raises(ConfigError, match="bad --input-shape"):
        parse_input_shapes(text)


def test_input_shapes_parse() -> None:
    assert parse_input_shapes("1x8x8, 2x3:int64") == (InputSpec((1, 8, 8)), InputSpec((2, 3), "int64"))


def test_input_shape_that_does_not_fit(zoo: Path) -> None:
    with pytest.raises(ConfigError, match=r"--input-shape 1x5 does not fit the model .*give the shape"):
        load_model(zoo / "lenet300.pt", input_shapes=parse_input_shapes("1x5"))
