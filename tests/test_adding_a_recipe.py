"""docs/adding-a-recipe.md builds a whole recipe: its files, written from the page into a temporary package,
registered with one line, must make data, train, evaluate and show up in kiln runs like any recipe."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import kiln.recipes
from kiln.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-recipe.md"


def code_blocks() -> dict[str, str]:
    """The page's code blocks, by the file their first comment line names."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {block.splitlines()[0].lstrip("# ").split(",")[0]: block for block in blocks}


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    blocks = code_blocks()
    package = tmp_path / "pkg" / "toy"
    package.mkdir(parents=True)
    for name, code in blocks.items():
        if name.startswith("toy/"):
            (package / name.removeprefix("toy/")).write_text(code)
    monkeypatch.setattr(kiln.recipes, "__path__", [*kiln.recipes.__path__, str(tmp_path / "pkg")])
    registry_line = blocks["src/kiln/recipes/__init__.py"].splitlines()[-1]
    monkeypatch.setitem(kiln.recipes.RECIPES, *eval("{" + registry_line + "}").popitem())  # the one registry line
    yield package, blocks["configs/toy/quick.yaml"]
    for module in [m for m in sys.modules if m.startswith("kiln.recipes.toy")]:
        del sys.modules[module]


def test_the_worked_example_is_a_whole_recipe(toy_package, tmp_path, monkeypatch, capsys):
    package, config = toy_package
    lines = sum(len(path.read_text().splitlines()) for path in package.glob("*.py"))
    assert lines == 131  # what the page says
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick.yaml").write_text(config)
    assert main(["data", "toy", "--out", "data/toy/other", "--samples", "64", "--noise", "0.5"]) == 0
    assert main(["train", "quick.yaml", "--run-dir", "runs/toy/quick"]) == 0  # makes data/toy/quick from data.generate
    results = json.loads(Path("runs/toy/quick/test_results.json").read_text())
    assert results["mae"] < 0.3 * results["mean_baseline_mae"]
    assert main(["evaluate", "runs/toy/quick"]) == 0
    recipe = importlib.import_module("kiln.recipes.toy").RECIPE
    assert recipe.headline(results)["baseline"] == "training mean"
    with pytest.raises(SystemExit):  # the generator's flags are typed: --samples takes an int
        main(["data", "toy", "--out", "x", "--samples", "many"])
    assert yaml.safe_load(Path("runs/toy/quick/config.yaml").read_text())["train"]["monitor"] == "val_mae"
