from __future__ import annotations

import pytest

from compressor import ConfigError, Pipeline, format_recipe, load_recipe, parse
from passes import MagnitudePrune

RECIPES = [
    "- magnitude-prune\n",
    "- magnitude-prune: {sparsity: 0.9}\n",
    "- magnitude-prune: {sparsity: 0.8, scope: layer, layers: ['fc*'], sparsities: {fc3.weight: 0.5}}\n",
    "- magnitude-prune: {sparsity: 0.5}\n- pipeline:\n  - magnitude-prune: {sparsity: 0.9}\n",
]


@pytest.mark.parametrize("text", RECIPES)
def test_round_trip(text: str) -> None:
    pipeline = parse(text)
    assert parse(str(pipeline)) == pipeline
    assert str(parse(str(pipeline))) == str(pipeline)


def test_parse_builds_the_passes() -> None:
    pipeline = parse("[magnitude-prune: {sparsity: 0.9, scope: layer}, magnitude-prune]")
    assert pipeline == Pipeline([MagnitudePrune(sparsity=0.9, scope="layer"), MagnitudePrune()])
    assert format_recipe(Pipeline([MagnitudePrune()])) == "- magnitude-prune\n"


def test_unknown_pass_lists_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown pass 'prune-everything'; known passes are: .*magnitude-prune"
    ):
        parse("[prune-everything]")


def test_unknown_argument_lists_the_pass_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) amount .* it takes: sparsity, scope"):
        parse("[magnitude-prune: {amount: 0.9}]")


@pytest.mark.parametrize(
    "text", ["[magnitude-prune: {sparsity: 0.9]", "- : :\n  - [", "42", "[]", "[[a, b]]"]
)
def test_malformed_recipe(text: str) -> None:
    with pytest.raises(ConfigError, match="malformed recipe"):
        parse(text)


def test_pass_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        parse("[magnitude-prune: {sparsity: 1.5}]")
    with pytest.raises(ConfigError, match="scope must be one of global, layer"):
        parse("[magnitude-prune: {scope: row}]")


def test_load_recipe_from_file_or_text(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPES[1])
    assert load_recipe(str(path)) == load_recipe(RECIPES[1]) == Pipeline([MagnitudePrune(sparsity=0.9)])
    with pytest.raises(ConfigError, match="cannot read recipe file"):
        load_recipe(str(tmp_path / "missing.yaml"))
