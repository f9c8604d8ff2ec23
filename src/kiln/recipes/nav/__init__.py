"""nav: grid navigation policies (the original guide: shared/seeds/004_*.txt, TRM navigation). Torch is imported only
inside functions."""

from __future__ import annotations

from pathlib import Path

from kiln.recipes import Generator, Recipe, lazy
from kiln.recipes.nav.config import NavConfig, NavGenerator


def made_with(info: dict) -> dict | None:
    """The generator settings a dataset.json records (its num_train_base is the generator's num_train); None for a
    directory without one, which load_data then names."""
    return {**info, "num_train": info.get("num_train_base")} if info else None


def evaluate_arguments(parser) -> None:
    parser.add_argument("--map", type=Path, help="a MovingAI .map file to roll the policy out on")
    parser.add_argument("--scen", type=Path, help="a MovingAI .scen file with start/goal pairs for --map")
    parser.add_argument("--num-pairs", type=int, help="start/goal pairs sampled when --scen is absent (default 200)")


RECIPE = Recipe(
    name="nav", config=NavConfig,
    generator=Generator(NavGenerator, lazy("kiln.recipes.nav.data", "generate"), recorded=made_with),
    # the original guide's train.py flags that are nav model keys
    train_flags={"--dim": "model.dim", "--depth": "model.depth", "--dropout": "model.dropout"},
    evaluate_arguments=evaluate_arguments,
)
