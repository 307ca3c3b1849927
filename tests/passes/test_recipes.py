"""Every registered pass parses from a recipe, round-trips, and runs on a tiny model."""

from __future__ import annotations

import pytest

from compressor import PASSES, Pipeline, parse

EXAMPLES = {
    "magnitude-prune": "{sparsity: 0.6, scope: layer, granularity: 1x4}",
    "retrain": "{epochs: 1, optimizer: sgd, lr: 0.01, weight_decay: 0.0001}",
    "finetune": "{steps: 3}",
    "iterative-prune": "{sparsity: 0.8, cycles: 2, epochs: 1}",
    "gradual-prune": "{sparsity: 0.8, epochs: 2, freq: 2, revive: false, granularity: '2:4'}",
    "agp-prune": "{sparsity: 0.8, epochs: 2, freq: 2, granularity: row}",
    "dsd": "{sparsity: 0.4, epochs: 1}",
    "sensitivity": "{sparsities: [0.5, 0.9], max_drop: 5.0}",
    "pipeline": "[magnitude-prune: {sparsity: 0.5}]",
    "structured-prune": "{sparsity: 0.5, norm: l1}",
    "remove-dead-neurons": "{}",
}


def test_every_pass_has_an_example() -> None:
    assert set(EXAMPLES) == set(PASSES.names())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_recipe_round_trips_and_runs(name: str, tiny_state) -> None:
    pipeline = parse(f"- {name}: {EXAMPLES[name]}\n")
    assert parse(str(pipeline)) == pipeline
    out = pipeline.run(tiny_state)
    assert len(out.history) >= 1 and out.history[-1].params == 50_610
    assert 0.0 <= out.history[-1].sparsity < 1.0 and out.history[-1].metric is not None
    assert isinstance(pipeline, Pipeline)
