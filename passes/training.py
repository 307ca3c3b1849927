"""The masked training loop every training pass shares (retrain, gradual pruning, AGP, DSD).

Masks hold pruned weights at zero through every step: their gradients are zeroed before the
optimizer step, their optimizer state (momentum, Adam moments) is cleared when they are pruned,
and the mask is re-applied after the step, so neither momentum nor weight decay can move them.
A ``MaskHook`` may change the masks as training goes (gradual schedules). Under ``torchrun``
the loop runs data-parallel (DDP, gloo on CPU) and masks are broadcast from rank 0, so every
rank holds the same masks.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.pipeline import PassContext
from compressor.state import State, set_train

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainArgs:
    """Fine-tuning settings, shared as fields by every pass that trains.

    ``steps > 0`` trains that many optimizer steps instead of ``epochs`` epochs. ``lr`` should
    sit between the final and the initial learning rate of the original training (Han 2015).
    ``weight_decay`` is L2 regularisation (Han: L2 beats L1 after retraining).
    ``clip_grad_norm > 0`` clips the gradient norm (recurrent models). ``keep_best`` restores
    the weights of the epoch with the best validation metric once the masks are final.
    """

    epochs: int = 1
    steps: int = 0
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    batch_size: int = 64
    clip_grad_norm: float = 0.0
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}"
            )
        for name in ("epochs", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer; got {value!r}")
        if self.epochs == 0 and self.steps == 0:
            raise ConfigError("give epochs > 0 or steps > 0")
        if self.batch_size == 0:
            raise ConfigError("batch_size must be positive")
        for name in ("lr", "weight_decay", "clip_grad_norm", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number; got {value!r}")

    def train_args(self) -> TrainArgs:
        return TrainArgs(**{f.name: getattr(self, f.name) for f in fields(TrainArgs)})


class MaskHook(Protocol):
    """Changes masks as training goes (gradual schedules).

    ``update`` runs after every optimizer step and may change ``masks`` in place (returning
    True when it did). With ``revive`` the optimizer updates the dense weights while the forward
    pass uses the masked ones (a straight-through estimate), so a pruned weight whose magnitude
    grows back past the threshold returns (Narang 2017); without it pruned weights are frozen at
    zero. Once ``final(step)`` holds, the masks no longer change and revival stops.
    """

    revive: bool
    fqns: tuple[str, ...]  # the weights whose masks it changes

    def update(
        self, step: int, params: Mapping[str, nn.Parameter], masks: dict[str, torch.Tensor]
    ) -> bool: ...

    def final(self, step: int) -> bool: ...


class FixedMasks:
    """The masks never change (retraining under a mask)."""

    revive = False
    fqns: tuple[str, ...] = ()

    def update(self, step: int, params: Mapping[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> bool:
        return False

    def final(self, step: int) -> bool:
        return True


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def setup() -> Dist:
        import torch.distributed as dist

        if not dist.is_available():
            return Dist()
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not launched by torchrun
                return Dist()
            dist.init_process_group("gloo")
        return Dist(dist.get_rank(), dist.get_world_size())

    def broadcast_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        if self.world > 1:
            import torch.distributed as dist

            for fqn in sorted(masks):
                buffer = masks[fqn].to(torch.uint8)
                dist.broadcast(buffer, src=0)
                masks[fqn].copy_(buffer.bool())  # type: ignore[union-attr]


def require_task(state: State, name: str) -> Any:
    if state.task is None:
        raise ConfigError(
            f"pass {name!r} trains the model and needs data: give --data (x_train, y_train, x_val, y_val)"
        )
    return state.task


def train(
    state: State,
    args: TrainArgs,
    ctx: PassContext,
    hook: MaskHook | None = None,
    *,
    lr: float | None = None,
    label: str = "train",
    pass_name: str = "retrain",
) -> tuple[State, dict[str, Any]]:
    """Train ``state.module`` in place (callers pass a clone) under its masks; return the new
    state and a summary (steps, per-epoch loss and metric, best epoch, final masks)."""
    task = require_task(state, pass_name)
    hook = hook or FixedMasks()
    env = Dist.setup()
    torch.manual_seed(ctx.seed)
    module = state.module
    params = dict(module.named_parameters())
    masks = {fqn: m.clone() for fqn, m in state.masks.items()}
    optimizer = _optimizer(module, args, lr or args.lr)
    x, y = task.split("train")
    total = total_steps(state, args, pass_name)
    scheduler = _lr_schedule(optimizer, args.lr_schedule, total)
    model: nn.Module = module
    if env.world > 1:
        model = nn.parallel.DistributedDataParallel(module)
    better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
    history: list[dict[str, float]] = []
    best: tuple[float, dict, dict, int] | None = None
    bar = ctx.progress(label, total)
    dense: dict[str, torch.Tensor] = {}  # the unmasked weights while pruned ones may revive
    step = epoch = 0
    while step < total:
        set_train(module)
        losses = []
        for idx in _batches(len(x), args.batch_size, env, seed=ctx.seed + epoch):
            optimizer.zero_grad(set_to_none=False)
            loss = task.loss_fn(model(x[idx]), y[idx])
            loss.backward()
            revive = hook.revive and not hook.final(step)
            with torch.no_grad():
                for fqn, mask in masks.items():
                    if revive and fqn in dense:
                        params[fqn].copy_(dense[fqn])  # the step updates the dense weights
                    else:
                        params[fqn].grad.mul_(mask)
            if args.clip_grad_norm:
                nn.utils.clip_grad_norm_(module.parameters(), args.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            if revive:
                dense = {fqn: params[fqn].detach().clone() for fqn in hook.fqns}
            if hook.update(step, params, masks):
                env.broadcast_masks(masks)
                if not revive:
                    _clear_pruned_state(optimizer, params, masks)
            with torch.no_grad():
                for fqn, mask in masks.items():
                    params[fqn].mul_(mask)
            losses.append(float(loss.detach()))
            bar.update(1, loss=losses[-1])
            step += 1
            if step >= total:
                break
        epoch += 1
        metric = task.evaluate(module)
        history.append({"epoch": epoch, "step": step, "loss": sum(losses) / len(losses), "metric": metric})
        bar.update(0, metric=metric)
        if args.keep_best and hook.final(step - 1) and (best is None or better(metric, best[0])):
            best = (
                metric,
                copy.deepcopy(module.state_dict()),
                {k: m.clone() for k, m in masks.items()},
                epoch,
            )
    bar.close()
    if best is not None:
        module.load_state_dict(best[1])
        masks = best[2]
    summary = {"steps": step, "epochs": history, "best_epoch": best[3] if best else None}
    return state.replace(module=module, masks=masks), summary


def total_steps(state: State, args: TrainArgs, pass_name: str) -> int:
    """Optimizer steps ``train`` will take: ``args.steps``, or ``args.epochs`` epochs of batches."""
    if args.steps:
        return args.steps
    rows = len(require_task(state, pass_name).split("train")[0]) // Dist.setup().world
    return args.epochs * math.ceil(rows / args.batch_size)


def _optimizer(module: nn.Module, args: TrainArgs, lr: float) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            module.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=args.weight_decay)


def _lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(total, 1)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _batches(n: int, batch_size: int, env: Dist, seed: int) -> Iterator[torch.Tensor]:
    """This rank's shuffled mini-batches; every rank gets the same number of batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    share = n // env.world if env.world > 1 else n
    mine = order[env.rank * share : (env.rank + 1) * share]
    yield from mine.split(batch_size)


def _clear_pruned_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero momentum / Adam moments of pruned weights, so nothing pushes them off zero."""
    for fqn, mask in masks.items():
        for value in optimizer.state.get(params[fqn], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                value.mul_(mask)
