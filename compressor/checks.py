"""Checks of the torch model itself: its outputs are finite and still depend on its inputs.

Run on the loaded model and after every pass, on the example input and fresh random ones
(``compressor.inputs``). A pruned-away layer makes a model return its bias whatever it is given
(global pruning can take a small layer to 100%); a diverged retraining makes it return NaN. Both
verify perfectly against themselves, so they are caught here, before anything is lowered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.inputs import trial_inputs
from compressor.state import State, flatten_outputs, prunable_weights, set_eval

TRIALS = 2
VARIES = 1e-5
"""An output varies when two inputs move it by more than this fraction of its magnitude."""


@dataclass(frozen=True)
class Probe:
    """What a model returned for the example input and ``TRIALS`` fresh ones."""

    inputs: list[tuple[torch.Tensor, ...]]
    outputs: list[list[torch.Tensor]]

    @staticmethod
    def of(state: State, seed: int = 0) -> Probe:
        inputs = trial_inputs(state.module, state.example_inputs, TRIALS, seed)
        return Probe(inputs, [state.reference_outputs(x) for x in inputs])

    def nonfinite(self) -> tuple[int, int] | None:
        """(trial, output) of the first output holding NaN or inf, or None."""
        for trial, outs in enumerate(self.outputs):
            for index, out in enumerate(outs):
                if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                    return trial, index
        return None

    def varying(self) -> list[bool]:
        """Per floating-point output: whether some input changes it. Integer and boolean outputs
        (class ids, masks) count as not varying: three inputs may map to one class legitimately."""
        first = self.outputs[0]
        result = []
        for index, out in enumerate(first):
            if not out.numel() or not out.is_floating_point():
                result.append(False)
                continue
            scale = float(out.double().abs().max())
            spread = max(float((o[index].double() - out.double()).abs().max()) for o in self.outputs[1:])
            result.append(spread > VARIES * max(scale, 1e-30))
        return result


def nonfinite_parameter(module: nn.Module) -> str | None:
    """The first parameter holding NaN or inf (buffers may hold -inf on purpose: attention masks)."""
    for name, p in module.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            kind = "NaN" if bool(torch.isnan(p).any()) else "inf"
            return f"{name} holds {kind}"
    return None


def nonfinite_hint(module: nn.Module) -> str:
    found = nonfinite_parameter(module)
    if found:
        return f"parameter {found}, as a diverged training run leaves it"
    return "no parameter holds NaN or inf: an operation overflows on this input"


def describe_input(trial: int) -> str:
    return "its example input" if trial == 0 else f"random input #{trial}"


def collapsed_layer(state: State, probe: Probe) -> str:
    """Where the dependence on the input is lost: a weight that is all zeros, else the first
    layer whose output is the same for two inputs that reached it different."""
    for fqn, weight in prunable_weights(state.module).items():
        if not bool(weight.any()):
            return f"{fqn} is 100% zero"
    seen: list[list[tuple[str, torch.Tensor, torch.Tensor]]] = [[], []]
    for which, inputs in enumerate(probe.inputs[:2]):
        hooks = [
            m.register_forward_hook(_recorder(name, seen[which]))
            for name, m in state.module.named_modules()
            if name and not list(m.children())
        ]
        try:
            set_eval(state.module)
            with torch.no_grad():
                state.module(*inputs)
        finally:
            for hook in hooks:
                hook.remove()
    for (name, a_in, a_out), (_, b_in, b_out) in zip(seen[0], seen[1], strict=False):
        same_shapes = a_in.shape == b_in.shape and a_out.shape == b_out.shape
        if same_shapes and not torch.equal(a_in, b_in) and torch.allclose(a_out, b_out, rtol=VARIES, atol=0):
            return f"layer {name} returns the same output for different inputs"
    return "no single layer found"


def _recorder(name: str, into: list[tuple[str, torch.Tensor, torch.Tensor]]):
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        try:
            outs = flatten_outputs(output)
        except TypeError:  # outputs that are not tensors: nothing to compare
            return
        if args and isinstance(args[0], torch.Tensor) and outs and outs[0].is_floating_point():
            into.append((name, args[0].detach().clone(), outs[0].detach().clone()))

    return hook


@dataclass(frozen=True)
class Problem:
    """What is wrong with a model: ``kind`` is ``nonfinite``, ``collapsed`` or ``fails``."""

    kind: str
    text: str

    FIXES = {  # noqa: RUF012  (a constant of the class)
        "nonfinite": "lower the learning rate or clip gradients (clip_grad_norm)",
        "collapsed": "prune less, or give that layer its own sparsity",
        "fails": "the model must run on inputs shaped like its example",
    }

    @property
    def fix(self) -> str:
        return self.FIXES[self.kind]


def model_problem(
    state: State, before: list[bool] | None, seed: int = 0
) -> tuple[Problem | None, list[bool]]:
    """Whether ``state``'s outputs hold NaN or inf, or an output that varied ``before`` no longer
    depends on the input, or it fails on a fresh input; and which outputs vary now."""
    try:
        probe = Probe.of(state, seed)
    except Exception as e:
        lines = str(e).strip().splitlines()
        return Problem(
            "fails", f"the model fails on random inputs ({type(e).__name__}: {lines[0] if lines else ''})"
        ), []
    bad = probe.nonfinite()
    if bad is not None:
        trial, index = bad
        hint = nonfinite_hint(state.module)
        text = f"the model's output {index} is not finite on {describe_input(trial)} ({hint})"
        return Problem("nonfinite", text), []
    varying = probe.varying()
    lost = [i for i, (was, now) in enumerate(zip(before or [], varying, strict=False)) if was and not now]
    if lost:
        text = (
            f"the model's output {lost[0]} no longer depends on the input ({collapsed_layer(state, probe)})"
        )
        return Problem("collapsed", text), varying
    return None, varying
