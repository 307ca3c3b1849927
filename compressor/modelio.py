"""Reading and writing model files without running code from them unless asked to.

Accepted: a ``torch.export`` archive (its pickled members are checked with the restricted
unpickler first), a checkpoint written by ``save_checkpoint`` (architecture name + state dict
+ example inputs, ``weights_only=True``), a pickled ``nn.Module`` only with ``trust_pickle``,
and ``torch.nn.utils.prune`` reparametrisations (``weight_orig``/``weight_mask``), whose masks
become the state's masks.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from compressor.checks import nonfinite_hint
from compressor.errors import ConfigError, ModelLoadError
from compressor.registry import ARCHITECTURES
from compressor.state import State, apply_masks, flatten_outputs, set_eval

CHECKPOINT_FORMAT = "compressor.checkpoint"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}
_TRUST_HINT = "re-run with --trust-pickle only if you trust its source, or save it with torch.export.save"


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def example(self) -> torch.Tensor:
        dtype = DTYPES[self.dtype]
        if dtype.is_floating_point:
            return torch.randn(self.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        return torch.zeros(self.shape, dtype=dtype)


def parse_input_shapes(text: str) -> tuple[InputSpec, ...]:
    """``1x8x8`` or ``1x32:int64``; several inputs separated by commas."""
    specs = []
    for part in text.split(","):
        shape, _, dtype = part.strip().partition(":")
        dtype = dtype or "float32"
        if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)*", shape) or dtype not in DTYPES:
            raise ConfigError(
                f"bad --input-shape {text!r}: expected positive dimensions joined by 'x' with an "
                f"optional :dtype ({', '.join(DTYPES)}), e.g. 1x8x8 or 1x32:int64"
            )
        specs.append(InputSpec(tuple(int(d) for d in shape.split("x")), dtype))
    return tuple(specs)


def load_model(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    input_shapes: Sequence[InputSpec] | None = None,
    task: Any = None,
) -> State:
    """Read a model file into a ``State`` and check that it runs on its example inputs."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist; give the path of a model file")
    if _is_export_archive(path):
        module, inputs, masks = _load_export_archive(path, trust_pickle)
    else:
        module, inputs, masks = _load_torch_file(path, trust_pickle)
    if input_shapes:
        inputs = tuple(spec.example() for spec in input_shapes)
    if not inputs:
        raise ConfigError(
            f"{str(path)!r} holds no example inputs; give --input-shape, e.g. --input-shape 1x64"
        )
    set_eval(module)
    _check_runs(module, inputs, from_user=bool(input_shapes))
    return State(module=module, example_inputs=inputs, masks=masks, task=task)


def save_checkpoint(
    path: str | Path,
    architecture: str,
    config: dict[str, Any],
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
) -> None:
    """The safe checkpoint format ``load_model`` reads with ``weights_only=True``."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "architecture": architecture,
            "config": config,
            "state_dict": module.state_dict(),
            "example_inputs": tuple(example_inputs),
        },
        path,
    )


def save_exported(state: State, path: str | Path) -> None:
    """Write ``state.module`` as a ``torch.export`` archive (pruned weights stored as zeros)."""
    set_eval(state.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(state.module, state.example_inputs)
    torch.export.save(program, path)


def _check_runs(module: nn.Module, inputs: tuple[torch.Tensor, ...], from_user: bool) -> None:
    """The module runs on ``inputs`` and its outputs are finite."""
    try:
        with torch.no_grad():
            outputs = flatten_outputs(module(*inputs))
    except Exception as e:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if from_user:
            raise ConfigError(
                f"--input-shape {shapes} does not fit the model ({problem}); "
                "give the shape of the model's input"
            ) from None
        raise ModelLoadError(f"the model does not run on its own example inputs ({problem})") from None
    for index, out in enumerate(outputs):
        if out.is_floating_point() and not bool(torch.isfinite(out).all()):
            raise ModelLoadError(
                f"the model's output {index} on its example input is not finite ({nonfinite_hint(module)}); "
                "retrain or restore the model before compressing it"
            )


def _is_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/archive_format") or n == "archive_format" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_export_archive(path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple, dict]:
    if not trust_pickle:
        _check_archive_is_data_only(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(path)
    except Exception as e:
        raise ModelLoadError(
            f"cannot read torch.export archive {str(path)!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'corrupt'}); re-export it with torch.export.save"
        ) from None
    args, kwargs = program.example_inputs or ((), {})
    if kwargs:
        raise ModelLoadError(f"{str(path)!r} has keyword example inputs; export it with positional ones")
    return program.module(), tuple(args), {}


def _check_archive_is_data_only(path: Path) -> None:
    """Refuse an archive member that ``torch.export.load`` would unpickle with code enabled.

    ``torch.export.load`` reads pickled weights, constants and example inputs with the
    unrestricted unpickler, so each is first loaded here with ``weights_only=True``.
    """
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        root = next(n for n in names if n.endswith("archive_format")).rsplit("archive_format", 1)[0]
        pickled = [n for n in names if n.startswith(f"{root}data/sample_inputs/")]
        for kind in ("weights", "constants"):
            for config_name in (
                n for n in names if n.startswith(f"{root}data/{kind}/") and n.endswith("config.json")
            ):
                for meta in json.loads(z.read(config_name))["config"].values():
                    member = f"{root}data/{kind}/{meta['path_name']}"
                    if meta.get("use_pickle") or not meta["path_name"].startswith(("weight_", "tensor_")):
                        pickled.append(member)
        for member in pickled:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(z.read(member)), weights_only=True)
            except Exception:
                raise ModelLoadError(
                    f"{str(path)!r} holds pickled Python objects ({member}) that run code when "
                    f"loaded; {_TRUST_HINT}"
                ) from None


def _load_torch_file(path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple, dict]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        if not _holds_code(path, e):
            raise ModelLoadError(
                f"cannot read model file {str(path)!r}: it is truncated, corrupt or not a torch "
                "file; give a torch.export archive (.pt2) or a torch.save'd model"
            ) from None
        if not trust_pickle:
            raise ModelLoadError(
                f"{str(path)!r} holds a pickled nn.Module, which runs code from the file when "
                f"loaded; {_TRUST_HINT}"
            ) from None
        return _load_pickled_module(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, obj)
    raise ModelLoadError(
        f"{str(path)!r} holds a {type(obj).__name__} (weights without an architecture); "
        "save the model with torch.export.save or as a models/ checkpoint"
    )


def _holds_code(path: Path, error: Exception) -> bool:
    """Did the restricted unpickler stop at a Python global (pickled code) or at bad bytes?"""
    if "GLOBAL" in str(error):
        return True
    with path.open("rb") as f:  # a raw (non-zip) pickle starts with the PROTO opcode
        return not zipfile.is_zipfile(path) and f.read(2) in {
            b"\x80\x02",
            b"\x80\x03",
            b"\x80\x04",
            b"\x80\x05",
        }


def _load_pickled_module(path: Path) -> tuple[nn.Module, tuple, dict]:
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:
        raise ModelLoadError(f"cannot unpickle {str(path)!r} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{str(path)!r} holds a {type(obj).__name__}, not an nn.Module")
    return obj, (), _take_prune_masks(obj)


def _take_prune_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """Turn ``torch.nn.utils.prune`` hooks into explicit masks and plain parameters."""
    masks = {}
    for prefix, sub in module.named_modules():
        for hook in list(sub._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                mask = getattr(sub, f"{name}_mask").detach().bool().clone()
                prune.remove(sub, name)
                masks[f"{prefix}.{name}" if prefix else name] = mask
    return masks


def _from_checkpoint(path: Path, ckpt: dict[str, Any]) -> tuple[nn.Module, tuple, dict]:
    name = ckpt.get("architecture")
    if name not in ARCHITECTURES:
        raise ModelLoadError(
            f"{str(path)!r} names architecture {name!r}, which is not known; "
            f"known architectures are: {', '.join(ARCHITECTURES.names())}"
        )
    module = ARCHITECTURES.get(name)(**ckpt.get("config", {}))
    state_dict, masks = _split_prune_state(ckpt["state_dict"])
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{str(path)!r}: weights do not fit architecture {name!r} ({str(e).splitlines()[1].strip()})"
        ) from None
    apply_masks(module, masks)
    return module, tuple(ckpt.get("example_inputs", ())), masks


def _split_prune_state(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``x.weight_orig`` + ``x.weight_mask`` (torch.nn.utils.prune) -> ``x.weight`` + a mask."""
    plain, masks = {}, {}
    for key, value in state_dict.items():
        if key.endswith("_orig") and f"{key[:-5]}_mask" in state_dict:
            fqn = key[:-5]
            masks[fqn] = state_dict[f"{fqn}_mask"].bool()
            plain[fqn] = value * masks[fqn]
        elif not (key.endswith("_mask") and f"{key[:-5]}_orig" in state_dict):
            plain[key] = value
    return plain, masks
