from __future__ import annotations

import pytest
import torch

from compressor import ConfigError
from passes.granularity import Granularity, global_masks, kth_smallest


@pytest.fixture
def weight() -> torch.Tensor:
    return torch.randn(12, 10, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("r, c", [(1, 4), (4, 1), (4, 4), (3, 3)])
def test_blocks_are_pruned_whole(weight: torch.Tensor, r: int, c: int) -> None:
    keep = Granularity.parse(f"{r}x{c}").prune_to(weight, 0.5)
    for i in range(0, 12, r):
        for j in range(0, 10, c):
            block = keep[i : i + r, j : j + c]
            assert block.all() or not block.any()
    assert abs(1 - keep.float().mean() - 0.5) < 0.2  # whole blocks: near, not exactly, the target


def test_blocks_go_by_max_magnitude() -> None:
    w = torch.tensor([[0.1, 0.1, 5.0, 0.0], [0.2, 0.3, 0.0, 0.0]])
    keep = Granularity.parse("2x2").prune_to(w, 0.5)
    assert keep.tolist() == [[False, False, True, True], [False, False, True, True]]


def test_n_of_m(weight: torch.Tensor) -> None:
    keep = Granularity.parse("2:4").prune_to(weight, 0.5)
    runs = keep[:, :8].reshape(12, 2, 4)
    assert (runs.sum(-1) == 2).all()
    kept = weight[:, :8].abs().reshape(12, 2, 4)
    # the kept ones are the two largest of each run
    smallest_kept = kept.where(runs, torch.tensor(float("inf"))).amin(-1)
    largest_pruned = kept.where(~runs, torch.tensor(0.0)).amax(-1)
    assert (smallest_kept >= largest_pruned).all()


def test_rows(weight: torch.Tensor) -> None:
    keep = Granularity.parse("row").prune_to(weight, 0.25)
    rows_kept = keep.all(1)
    assert (keep.any(1) == rows_kept).all() and int(rows_kept.sum()) == 9
    norms = weight.norm(dim=1)
    assert norms[rows_kept].min() >= norms[~rows_kept].max()


def test_conv_channels() -> None:
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    keep = Granularity.parse("channel").prune_to(w, 0.5)
    per_channel = keep.flatten(1)
    assert (per_channel.all(1) | ~per_channel.any(1)).all() and int(per_channel.all(1).sum()) == 4


def test_threshold_and_old_masks(weight: torch.Tensor) -> None:
    g = Granularity.parse("unstructured")
    keep = g.prune_below(weight, 0.5)
    assert torch.equal(keep, weight.abs() >= 0.5)
    old = torch.rand(12, 10, generator=torch.Generator().manual_seed(2)) > 0.3
    assert not (g.prune_below(weight, 0.0, old) & ~old).any()  # pruned stays pruned
    assert not (g.prune_to(weight, 0.1, old) & ~old).any()


def test_global_ranks_across_layers() -> None:
    small, large = torch.rand(4, 4) * 0.1, 10.0 + torch.rand(4, 4)
    unstructured = Granularity.parse("unstructured")
    masks = global_masks({"a": small, "b": large}, 0.5, unstructured, {}, cap=1.0)
    assert not masks["a"].any() and masks["b"].all()
    # With the default cap no layer goes: "a" keeps its largest weight, "b" gives up its smallest.
    masks = global_masks({"a": small, "b": large}, 0.5, unstructured, {})
    assert int(masks["a"].sum()) == 1 and bool(masks["a"].flatten()[small.flatten().argmax()])
    assert int((~masks["b"]).sum()) == 1 and not bool(masks["b"].flatten()[large.flatten().argmin()])
    rows = global_masks({"a": small, "b": large}, 0.5, Granularity.parse("row"), {})
    assert int(rows["a"].any(1).sum()) == 1 and int((~rows["b"].all(1)).sum()) == 1  # whole rows


@pytest.mark.parametrize("text", ["4:2", "0x4", "diagonal", "2:2"])
def test_bad_granularity(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown granularity"):
        Granularity.parse(text)


def test_kth_smallest_is_exact_across_layers_with_ties_zeros_and_pruned_entries() -> None:
    """The selection global pruning thresholds by, against a full sort of all the scores."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        layers = [
            torch.randn(int(torch.randint(1, 2000, (1,), generator=gen)), generator=gen).abs()
            for _ in range(3)
        ]
        if trial % 3 == 0:
            layers[0][: len(layers[0]) // 2] = -1.0  # pruned before: they go first
        if trial % 4 == 0:
            layers = [t.round(decimals=1) for t in layers]  # many ties
        if trial % 5 == 0:
            layers[1][:] = 0.0
        flat = torch.cat(layers).sort().values
        k = int(torch.randint(1, len(flat) + 1, (1,), generator=gen))
        assert kth_smallest([(lambda t=t: t) for t in layers], k) == float(flat[k - 1])
