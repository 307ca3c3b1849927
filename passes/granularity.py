"""What a pruning decision removes at once: single weights, r x c blocks, N of every M, or rows.

- ``unstructured``: each weight, scored by |w| (Han et al. 2015).
- ``RxC`` (e.g. ``1x4``, ``4x1``, ``4x4``): blocks of the weight viewed as a matrix
  (rows = output units, columns = everything else), scored by the block's max |w|
  (Narang et al. 2017, "Block-Sparse Recurrent Neural Networks", arXiv:1711.02782).
- ``N:M`` (e.g. ``2:4``): in every run of M consecutive weights along a row, at most M - N are
  pruned (the pattern of NVIDIA's sparse tensor cores).
- ``row`` / ``channel``: whole output units (rows of a Linear or RNN gate matrix, output
  channels of a Conv), scored by L2 norm: structured pruning, which dead-neuron removal turns
  into smaller dense layers.

Masks are element masks (True = kept) either way; already-pruned weights stay pruned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compressor.errors import ConfigError

GRANULARITIES = "unstructured, RxC blocks (1x4, 4x1, 4x4, ...), N:M (2:4), row, channel"


@dataclass(frozen=True)
class Granularity:
    kind: str  # "unstructured" | "block" | "nm" | "row"
    r: int = 1
    c: int = 1

    @staticmethod
    def parse(text: str) -> Granularity:
        text = str(text).strip().lower()
        if text in ("unstructured", "1x1"):
            return Granularity("unstructured")
        if text in ("row", "channel"):
            return Granularity("row")
        if m := re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", text):
            return Granularity("block", int(m[1]), int(m[2]))
        if (m := re.fullmatch(r"([1-9]\d*):([1-9]\d*)", text)) and int(m[1]) < int(m[2]):
            return Granularity("nm", int(m[1]), int(m[2]))
        raise ConfigError(f"unknown granularity {text!r}; use one of: {GRANULARITIES}")

    # --- scores per group -------------------------------------------------------------------

    def group_scores(self, weight: torch.Tensor) -> torch.Tensor:
        """One score per group; higher = more important."""
        w = weight.detach().abs().float().reshape(weight.shape[0], -1)
        if self.kind == "row":
            return w.norm(dim=1)
        if self.kind == "block":
            return F.max_pool2d(w[None, None], (self.r, self.c), ceil_mode=True)[0, 0]
        return w  # unstructured and N:M score single weights

    def expand(self, group_keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Element mask of ``shape`` from a mask over groups."""
        rows, cols = shape[0], math.prod(shape[1:])
        if self.kind == "row":
            return group_keep[:, None].expand(rows, cols).reshape(shape)
        if self.kind == "block":
            full = group_keep.repeat_interleave(self.r, 0).repeat_interleave(self.c, 1)
            return full[:rows, :cols].reshape(shape)
        return group_keep.reshape(shape)

    def group_sizes(self, shape: torch.Size) -> torch.Tensor:
        """Number of weights in each group (edge blocks can be partial)."""
        ones = torch.ones(shape[0], math.prod(shape[1:]))
        if self.kind == "row":
            return ones.sum(1)
        if self.kind == "block":
            return F.avg_pool2d(ones[None, None], (self.r, self.c), ceil_mode=True, divisor_override=1)[0, 0]
        return ones

    # --- masks ------------------------------------------------------------------------------

    def masked_scores(self, weight: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
        """Group scores where already-pruned groups score -1, so they are pruned first."""
        w = weight if old is None else weight * old
        scores = self.group_scores(w)
        if old is not None:
            dead = ~self.group_scores(old.to(w.dtype)).bool()
            scores = torch.where(dead, torch.full_like(scores, -1.0), scores)
        return scores

    def prune_to(
        self, weight: torch.Tensor, sparsity: float, old: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask removing about ``sparsity`` of ``weight``'s entries, lowest scores first."""
        if self.kind == "nm":
            return self._nm(weight, old, count=min(round(sparsity * self.c), self.c - self.r))
        old_masks = {"w": old} if old is not None else {}
        return global_masks({"w": weight}, sparsity, self, old_masks, cap=1.0)["w"]  # its own sparsity

    def prune_below(
        self, weight: torch.Tensor, threshold: float, old: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask removing every group scoring below ``threshold`` (N:M: at most M - N per run), but
        never more than ``MAX_LAYER_SPARSITY`` of the layer: past it, its highest groups stay."""
        if self.kind == "nm":
            return self._nm(weight, old, threshold=threshold)
        keep = self.expand(self.masked_scores(weight, old) >= threshold, weight.shape)
        keep = keep if old is None else keep & old
        if keep.numel() - int(keep.count_nonzero()) > MAX_LAYER_SPARSITY * keep.numel():
            old_masks = {"w": old} if old is not None else {}
            return global_masks({"w": weight}, MAX_LAYER_SPARSITY, self, old_masks)["w"]
        return keep

    def _nm(
        self,
        weight: torch.Tensor,
        old: torch.Tensor | None,
        count: int | None = None,
        threshold: float | None = None,
    ) -> torch.Tensor:
        n, m = self.r, self.c
        scores = self.masked_scores(weight, old)
        rows, cols = scores.shape
        pad = (-cols) % m
        groups = F.pad(scores, (0, pad), value=float("inf")).reshape(rows, -1, m)
        rank = groups.argsort(dim=-1).argsort(dim=-1)  # 0 = smallest in its run of m
        prune = rank < (m - n if count is None else count)
        if threshold is not None:
            prune &= groups < threshold
        keep = (~prune).reshape(rows, -1)[:, :cols].reshape(weight.shape)
        return keep if old is None else keep & old


MAX_LAYER_SPARSITY = 0.99
"""Global pruning takes no layer past this: a layer at 100% makes the model return a constant."""


def global_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    granularity: Granularity,
    old: Mapping[str, torch.Tensor],
    cap: float = MAX_LAYER_SPARSITY,
) -> dict[str, torch.Tensor]:
    """Prune ``sparsity`` of all entries of ``weights`` together, lowest-scoring groups first.

    Groups are ranked across layers and taken whole until the requested number of entries is
    reached, so blocks and rows are never split. No layer goes past ``cap`` (nor loses its last
    group): a layer that would is pruned to ``cap`` by its own ranking and the rest of the
    budget is spread over the others, again until none is over (water-filling).
    """
    if granularity.kind == "nm":
        return {k: granularity.prune_to(w, sparsity, old.get(k)) for k, w in weights.items()}
    ranked = _unstructured_masks if granularity.kind == "unstructured" else _ranked_masks
    budget = sparsity * sum(w.numel() for w in weights.values())
    capped: dict[str, torch.Tensor] = {}
    while True:
        free = {k: w for k, w in weights.items() if k not in capped}
        left = budget - sum(_pruned(m) for m in capped.values())
        masks = ranked(free, left, granularity, old) if free else {}
        over = [k for k, m in masks.items() if _pruned(m) > cap * m.numel()]
        if not over:
            return {**masks, **capped}
        for k in over:
            limit = cap * weights[k].numel()
            capped[k] = ranked({k: weights[k]}, limit, granularity, old, at_most=True)[k]


def _ranked_masks(
    weights: Mapping[str, torch.Tensor],
    target: float,
    granularity: Granularity,
    old: Mapping[str, torch.Tensor],
    at_most: bool = False,
) -> dict[str, torch.Tensor]:
    """Masks pruning the lowest-scoring groups of ``weights`` together, as many as bring the
    pruned entries nearest ``target`` (``at_most``: not past it); at least one group stays."""
    scores = {k: granularity.masked_scores(w, old.get(k)) for k, w in weights.items()}
    sizes = {k: granularity.group_sizes(w.shape) for k, w in weights.items()}
    flat_scores = torch.cat([s.flatten() for s in scores.values()])
    flat_sizes = torch.cat([s.flatten() for s in sizes.values()])
    order = flat_scores.argsort(stable=True)
    entries = torch.cat([torch.zeros(1), flat_sizes[order].cumsum(0)])
    count = int((entries <= target).sum()) - 1 if at_most else int((entries - target).abs().argmin())
    count = min(count, len(order) - 1)  # a group always stays
    pruned = torch.zeros(len(order), dtype=torch.bool)
    pruned[order[:count]] = True
    masks = {}
    for (k, s), part in zip(scores.items(), pruned.split([s.numel() for s in scores.values()]), strict=True):
        keep = granularity.expand(~part.reshape(s.shape), weights[k].shape)
        masks[k] = keep if k not in old else keep & old[k]
    return masks


def _unstructured_masks(
    weights: Mapping[str, torch.Tensor],
    target: float,
    granularity: Granularity,
    old: Mapping[str, torch.Tensor],
    at_most: bool = False,
) -> dict[str, torch.Tensor]:
    """``_ranked_masks`` for single weights, without sorting: the count-th smallest score by
    selection (``kth_smallest``), ties taken in order. 100M-parameter models prune in a second
    or two, holding one layer's scores at a time beside the weights."""
    scores = {k: _scores(w, old.get(k)) for k, w in weights.items()}  # computed when needed
    total = sum(w.numel() for w in weights.values())
    count = math.floor(target) if at_most else math.ceil(target - 0.5)  # the nearest, as _ranked_masks
    count = max(0, min(count, total - 1))
    threshold = kth_smallest(scores.values(), count) if count else -math.inf  # -inf: none pruned
    masks = {}
    ties_left = count
    for k, score in scores.items():
        masks[k] = score() >= threshold
        ties_left -= _pruned(masks[k])
    # Entries equal to the threshold are pruned in order until ``count`` is reached.
    for k, score in scores.items():
        if ties_left <= 0:
            break
        equal = (score() == threshold).reshape(-1).nonzero().reshape(-1)[:ties_left]
        masks[k].view(-1)[equal] = False
        ties_left -= len(equal)
    return {k: m if k not in old else m & old[k] for k, m in masks.items()}


BUCKETS = 1 << 16
NEGATIVE = 0xBF80 - (1 << 16)  # the top 16 bits of -1.0 (pruned already), as int32 shifts them


def kth_smallest(scores: Iterable[Callable[[], torch.Tensor]], k: int) -> float:
    """The ``k``-th smallest (1-based) of all the scores (float32, each >= 0 or -1), exactly,
    by radix selection: a histogram of every score's top 16 bits (sign, exponent and 7 bits of
    mantissa: non-negative floats order as their bits), then ``kthvalue`` among the few in the
    bucket that holds the k-th. No concatenated copy of all the weights; ``scores`` are called
    twice."""
    scores = list(scores)
    histogram = torch.zeros(BUCKETS, dtype=torch.int64)
    for score in scores:  # -1.0 lands in bucket 0, 0.0 in -NEGATIVE, the rest above in order
        top = score().reshape(-1).view(torch.int32) >> 16
        histogram += torch.bincount(top.sub_(NEGATIVE), minlength=BUCKETS)
    below = histogram.cumsum(0)
    bucket = int(torch.searchsorted(below, k))  # the first bucket reaching k
    if bucket < -NEGATIVE:
        return -1.0
    lo, hi = (
        torch.tensor([(bucket + i + NEGATIVE) << 16], dtype=torch.int32).view(torch.float32) for i in (0, 1)
    )
    inside = []
    for score in scores:
        values = score().reshape(-1)
        inside.append(values[(values >= lo) & (values < hi)])
    return float(torch.cat(inside).kthvalue(k - int(below[bucket - 1])).values)


def _pruned(mask: torch.Tensor) -> int:
    return mask.numel() - int(mask.count_nonzero())


def _scores(weight: torch.Tensor, old: torch.Tensor | None) -> Callable[[], torch.Tensor]:
    """|w|, with -1 where ``old`` has pruned already (those go first), computed when called."""

    def score() -> torch.Tensor:
        values = weight.detach().abs().float()  # float32 whatever the weight's dtype (numpy has no bf16)
        return values if old is None else values.masked_fill_(~old, -1.0)

    return score
