"""The recipe registry: name -> package. A recipe package defines `RECIPE = Recipe(...)`.

Only the recipe's config schema is imported eagerly (pydantic); its functions import torch lazily,
so `kiln --help` and config checks stay fast.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import argparse

from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.config import RunConfig
    from kiln.engine.task import Evaluation, Splits, Task

RECIPES = {
    "nav": "kiln.recipes.nav",
    "traffic": "kiln.recipes.traffic",
    "world": "kiln.recipes.world",
    "printer": "kiln.recipes.printer",
    "seqgen": "kiln.recipes.seqgen",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    config: type[RunConfig]
    # Make sure cfg.data.dir exists (generate it from the config's generator settings if it can).
    prepare_data: Callable[[RunConfig, Callable[[str], None]], None]
    # Read the dataset directory into Splits: in-memory tensors, or map-style datasets for data that does not
    # fit in memory (log: console + train.log).
    load_data: Callable[[RunConfig, Callable[[str], None]], Splits]
    # Build the task (model + steps) for a config and the dataset's description.
    build_task: Callable[[RunConfig, dict[str, Any]], Task]
    # Held-out metrics of a trained task (and the predictions behind them); `options` carries the recipe's own
    # `kiln evaluate` flags.
    evaluate: Callable[[Task, Splits, RunConfig, dict[str, Any]], Evaluation]
    # Plots and report.md into run_dir/report, from the results and outputs evaluate() returned.
    report: Callable[[Path, Task, Splits, RunConfig, dict[str, Any], dict[str, Any]], None]
    # `kiln data <name> ...`: add its flags to a parser (--out is common), then build the dataset from parsed flags.
    data_arguments: Callable[[argparse.ArgumentParser], None]
    make_data: Callable[[argparse.Namespace], None]
    # The seed's training flags that map one to one onto config keys (`--dim 128` == `model.dim=128`).
    train_flags: dict[str, str] = field(default_factory=dict)
    # The recipe's own `kiln evaluate RUN ...` flags; their values reach evaluate() as `options`.
    evaluate_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Tools of the recipe's own, run as `kiln <recipe> <command> ...`: command -> (add its arguments, run it).
    commands: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]] = \
        field(default_factory=dict)


def generate_if_missing(data_dir: Path, settings: Any, make: Callable[[Path, Any, Callable[[str], None]], Any],
                        command: str, log: Callable[[str], None]) -> bool:
    """Make a missing data.dir from the config's data.generate; True if it was made, False if it existed.
    `command` is the `kiln data ...` line that makes it by hand (shown when data.generate is null)."""
    if data_dir.exists():
        return False
    if settings is None:
        raise KilnError(f"data.dir '{data_dir}' does not exist; make it with: {command}")
    log(f"data.dir '{data_dir}' not found: generating it from data.generate")
    make(data_dir, settings, log)
    return True


def dataset_info(data_dir: Path, recipe: str | None = None, command: str = "") -> dict[str, Any]:
    """data_dir/dataset.json, the description `kiln data` writes beside the data. Where there is none: {} (the
    recipe reads plain files too), or, when `recipe` needs one, an error naming the `command` that makes it."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        if recipe is None:
            return {}
        raise KilnError(f"data.dir '{data_dir}' has no dataset.json, so it is not a {recipe} dataset; make one with: {command}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise KilnError(f"'{path}' is not valid JSON ({err}); regenerate the dataset with kiln data") from None


def warn_if_made_differently(data_dir: Path, wanted: dict[str, Any], have: dict[str, Any], log: Callable[[str], None]) -> None:
    """An existing dataset made with other generator settings than the config's is used, but never silently."""
    differ = [f"{k}={have.get(k)} (config: {v})" for k, v in wanted.items() if have.get(k) != v]
    if differ:
        log(f"Warning: using existing {data_dir}, made with {', '.join(differ)}; delete it or change data.dir to regenerate")


def lazy(module: str, name: str) -> Callable[..., Any]:
    """A recipe function imported on its first call, so the registry never imports torch."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    return call


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KilnError(f"unknown recipe '{name}'; available: {', '.join(sorted(RECIPES))}")
    return importlib.import_module(RECIPES[name]).RECIPE


def recipe_of(path: str | Path) -> Recipe:
    """The recipe a config file names in its `recipe:` key."""
    from kiln.config import read_config_file

    raw = read_config_file(path)
    if "recipe" not in raw:
        raise KilnError(f"config file '{path}' has no 'recipe:' key; add e.g. 'recipe: nav'")
    return get_recipe(str(raw["recipe"]))


def load_recipe_config(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, RunConfig]:
    """Find a config file's recipe, then read, override and validate the file against its schema."""
    from kiln.config import load_config

    recipe = recipe_of(path)
    return recipe, load_config(path, list(overrides), recipe.config)
