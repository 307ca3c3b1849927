"""Real architectures from a well-kept model library, with random weights, for benchmarks and tests.

    python -m models.real bert-base --out /tmp/bert-base.pt2      # a torch.export archive
    python -m models.real --list

``transformers`` ships the code of BERT, MobileNetV2, ResNet and ViT; no weights can be
downloaded here, so each is initialised from a seed, with an initialisation whose activations
neither vanish nor explode through the depth (the library's own makes a deep CNN's output
~1e-30, which makes every output comparison meaningless): convolutions Kaiming (fan-in),
BatchNorm weight 1 and bias 0, and for the classifier heads a fan-in scale too. The bi-LSTM
acoustic model (a speech-style encoder over 80 filterbank features) is plain torch.

Every builder returns ``(module, example_inputs)``; the module returns one tensor (the logits or
the last hidden state), so it exports and lowers like any model file ``compress`` reads.
Needs ``transformers`` (``pip install -e '.[dev]'`` installs it) for all but the acoustic model.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


class Logits(nn.Module):
    """A library model whose forward returns an output object: keep one tensor of it."""

    def __init__(self, model: nn.Module, field: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(*inputs), self.field)


def well_conditioned(module: nn.Module) -> nn.Module:
    """Kaiming (fan-in) convolutions and linear layers, unit BatchNorm, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            gain = math.sqrt(2.0) if isinstance(m, nn.Conv2d) else 1.0
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, gain / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _transformers() -> object:
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "the real architectures need transformers: pip install transformers==5.23.0"
        ) from None
    transformers.logging.set_verbosity_error()
    return transformers


def bert(
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    intermediate: int = 1024,
    seq: int = 128,
    seed: int = 0,
    vocab: int = 30522,
) -> Built:
    """A BERT-style encoder returning its last hidden state for ``seq`` token ids (batch 1).
    The library's BERT initialisation (normal, std 0.02, with LayerNorm) is well-conditioned."""
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(512, seq),
        attn_implementation="eager",
    )
    model = Logits(tf.BertModel(config, add_pooling_layer=False), "last_hidden_state").eval()
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)


def gpt2(
    layers: int = 2, hidden: int = 64, heads: int = 2, seq: int = 16, vocab: int = 500, seed: int = 0
) -> Built:
    """A GPT-2-style decoder (its Conv1D layers compute ``x @ W + b``; its key/value cache
    starts from an empty tensor) returning the logits for ``seq`` token ids."""
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.GPT2Config(
        n_layer=layers,
        n_embd=hidden,
        n_head=heads,
        vocab_size=vocab,
        n_positions=max(64, seq),
        attn_implementation="eager",
    )
    model = Logits(tf.GPT2LMHeadModel(config)).eval()
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)


def mobilenet_v2(image: int = 224, classes: int = 1000, seed: int = 0) -> Built:
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.MobileNetV2Config(image_size=image, num_labels=classes)
    model = Logits(well_conditioned(tf.MobileNetV2ForImageClassification(config))).eval()
    return model, (torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(seed)),)


def resnet18(image: int = 224, classes: int = 1000, seed: int = 0) -> Built:
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.ResNetConfig(
        depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic", num_labels=classes
    )
    model = Logits(well_conditioned(tf.ResNetForImageClassification(config))).eval()
    return model, (torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(seed)),)


def vit(layers: int = 6, hidden: int = 192, heads: int = 3, image: int = 224, seed: int = 0) -> Built:
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=image,
        attn_implementation="eager",
    )
    model = Logits(tf.ViTForImageClassification(config)).eval()
    return model, (torch.randn(1, 3, image, image, generator=torch.Generator().manual_seed(seed)),)


class AcousticModel(nn.Module):
    """A speech-style encoder: a 2-layer bidirectional LSTM over filterbank frames, and a Linear
    head over the output units (per frame)."""

    def __init__(self, features: int = 80, hidden: int = 256, layers: int = 2, units: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out)


def acoustic(
    features: int = 80, hidden: int = 256, layers: int = 2, units: int = 32, frames: int = 50, seed: int = 0
) -> Built:
    torch.manual_seed(seed)
    model = AcousticModel(features, hidden, layers, units).eval()
    return model, (torch.randn(1, frames, features, generator=torch.Generator().manual_seed(seed)),)


MODELS: dict[str, Callable[[], Built]] = {
    "bert-mini": lambda: bert(4, 256, 4, 1024),
    "bert-base": lambda: bert(12, 768, 12, 3072),
    "bert-large": lambda: bert(24, 1024, 16, 4096),
    "mobilenet-v2": mobilenet_v2,
    "resnet-18": resnet18,
    "vit-tiny": vit,
    "acoustic-bilstm": acoustic,
}
"""The models by name: ``bert-base`` is BERT-base-sized (110M parameters), ``bert-large``
BERT-large-sized (335M), ``bert-mini`` a 4-layer encoder of hidden 256 (11M)."""


def export(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """A ``torch.export`` archive with its example inputs: a model file ``compress`` reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, inputs), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", choices=sorted(MODELS))
    parser.add_argument("--out", type=Path, help="the .pt2 file to write (default: MODEL.pt2 here)")
    parser.add_argument("--list", action="store_true", help="list the models and their sizes")
    args = parser.parse_args()
    if args.list or not args.model:
        for name, build in MODELS.items():
            module, _ = build()
            print(f"{name}: {sum(p.numel() for p in module.parameters()):,} parameters")
        return
    module, inputs = MODELS[args.model]()
    out = args.out or Path(f"{args.model}.pt2")
    export(module, inputs, out)
    print(f"wrote {out}: {sum(p.numel() for p in module.parameters()):,} parameters")


if __name__ == "__main__":
    main()
