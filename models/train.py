"""Train the example models on digits and save them in every format ``compress`` reads.

    python -m models.train --out models/zoo          # a few seconds on 2 cores

Writes, per model NAME (``lenet300``, ``lstm``, ``lenet5``): ``NAME.pt`` (checkpoint, safe),
``NAME.pt2`` (torch.export archive), ``NAME_pickled.pt`` (pickled nn.Module, needs
--trust-pickle), ``NAME_prune.pt`` (a checkpoint with torch.nn.utils.prune reparametrisations),
and the data files ``digits.npz`` / ``digits_seq.npz`` / ``digits_img.npz``.
The character-level language models train with ``python -m models.train_lm``.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from compressor.modelio import save_checkpoint
from compressor.registry import ARCHITECTURES
from models.digits import digits_splits

SPECS = {
    # name: (architecture, config, data layout, epochs, learning rate)
    "lenet300": ("lenet-300-100", {}, "flat", 40, 1e-3),
    "lstm": ("lstm-classifier", {"hidden": 128}, "sequence", 40, 3e-3),
    "lenet5": ("lenet-5", {}, "image", 40, 3e-3),
}
DATA_FILES = {"flat": "digits.npz", "sequence": "digits_seq.npz", "image": "digits_img.npz"}


def train(module: nn.Module, data: dict[str, np.ndarray], epochs: int, lr: float, seed: int = 0) -> float:
    """Adam on mini-batches of 64; returns the validation accuracy in percent."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(epochs):
        module.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
            opt.step()
    module.eval()
    with torch.no_grad():
        pred = module(torch.from_numpy(data["x_val"])).argmax(-1).numpy()
    return float((pred == data["y_val"]).mean() * 100)


def write_all(name: str, out: Path, seed: int = 0) -> float:
    arch, config, layout, epochs, lr = SPECS[name]
    data = digits_splits(layout)
    torch.manual_seed(seed)
    module = ARCHITECTURES.get(arch)(**config)
    accuracy = train(module, data, epochs, lr, seed)
    example = (torch.from_numpy(data["x_val"][:1]),)
    save_checkpoint(out / f"{name}.pt", arch, config, module, example)
    with warnings.catch_warnings():  # nn.LSTM's flat-weights notice during export
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(torch.export.export(module, example), out / f"{name}.pt2")
    torch.save(module, out / f"{name}_pickled.pt")
    pruned = copy.deepcopy(module)
    for sub in pruned.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            prune.l1_unstructured(sub, "weight", amount=0.5)
    save_checkpoint(out / f"{name}_prune.pt", arch, config, pruned, example)
    np.savez_compressed(out / DATA_FILES[layout], **data)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "zoo")
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        print(f"{name}: validation accuracy {write_all(name, args.out):.2f}%")


if __name__ == "__main__":
    main()
