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

from pydantic import BaseModel

from kiln.errors import KilnError

if TYPE_CHECKING:
    import argparse

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
class Generator:
    """How a recipe makes its embedded default data: `data.generate`'s schema (also the `kiln data <recipe>` flags)
    and the function that writes a dataset directory from it, returning its dataset.json."""

    schema: type[BaseModel]
    make: Callable[[Path, Any, Callable[[str], None]], dict[str, Any]]
    # The words between `kiln data <recipe>` and `--out`, e.g. "--simulate", for the line that makes data.dir by hand.
    flags: str = ""
    # The generator settings a dataset.json records (default: its top-level keys); None where it was not generated.
    recorded: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda info: info


@dataclass(frozen=True)
class Recipe:
    """A recipe's seam to the engine and the CLI. Only `name` and `config` are required: the rest defaults to the
    package's own modules (`kiln.recipes.<name>.data.load_data`, `.task.build_task`, `.evaluation.evaluate`
    and `.headline`, `.report.write_report`) and, with a `generator`, to making data.dir from `data.generate` and to
    `kiln data <name>` flags from its schema. A field given explicitly wins."""

    name: str
    config: type[RunConfig]
    generator: Generator | None = None
    # Make sure cfg.data.dir exists (default: generate it from data.generate, or name the `kiln data` line that does).
    prepare_data: Callable[[RunConfig, Callable[[str], None]], None] | None = None
    # Read the dataset directory into Splits: in-memory tensors, or map-style datasets for data that does not
    # fit in memory (log: console + train.log).
    load_data: Callable[[RunConfig, Callable[[str], None]], Splits] | None = None
    # Build the task (model + steps) for a config and the dataset's description.
    build_task: Callable[[RunConfig, dict[str, Any]], Task] | None = None
    # Held-out metrics of a trained task (and the predictions behind them); `options` carries the recipe's own
    # `kiln evaluate` flags.
    evaluate: Callable[[Task, Splits, RunConfig, dict[str, Any]], Evaluation] | None = None
    # Plots and report.md into run_dir/report, from the results and outputs evaluate() returned.
    report: Callable[[Path, Task, Splits, RunConfig, dict[str, Any], dict[str, Any]], None] | None = None
    # The recipe's headline from its test_results.json, for `kiln runs` and `kiln demo`: {"metric": name, "value": x,
    # "baseline": name, "baseline_value": y, "higher_is_better": bool} (default: its evaluation.headline).
    headline: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # `kiln data <name> ...`: add its flags to a parser (--out is common), then build the dataset from parsed flags.
    data_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    make_data: Callable[[argparse.Namespace], None] | None = None
    # The original guide's training flags that map one to one onto config keys (`--dim 128` == `model.dim=128`).
    train_flags: dict[str, str] = field(default_factory=dict)
    # The recipe's own `kiln evaluate RUN ...` flags; their values reach evaluate() as `options`.
    evaluate_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Tools of the recipe's own, run as `kiln <recipe> <command> ...`: command -> (add its arguments, run it).
    commands: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]] = \
        field(default_factory=dict)
    # Where the default functions live (a recipe outside kiln.recipes, e.g. a test's, names its package).
    package: str | None = None

    def __post_init__(self) -> None:
        package = self.package or f"kiln.recipes.{self.name}"
        defaults = {
            "load_data": lazy(f"{package}.data", "load_data"),
            "build_task": lazy(f"{package}.task", "build_task"),
            "evaluate": lazy(f"{package}.evaluation", "evaluate"),
            "report": lazy(f"{package}.report", "write_report"),
            "headline": lazy(f"{package}.evaluation", "headline"),
        }
        if self.generator is not None:
            defaults.update(prepare_data=self.generate_if_missing, data_arguments=self.generator_arguments,
                            make_data=self.make_from_arguments)
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        missing = [name for name in ("prepare_data", "data_arguments", "make_data") if getattr(self, name) is None]
        if missing:
            raise TypeError(f"recipe {self.name}: give a generator or {', '.join(missing)}")

    def data_command(self, data_dir: Path | str = "DIR") -> str:
        flags = f" {self.generator.flags}" if self.generator is not None and self.generator.flags else ""
        return f"kiln data {self.name}{flags} --out {data_dir}"

    def generate_if_missing(self, cfg: RunConfig, log: Callable[[str], None]) -> None:
        """The default prepare_data: make a missing data.dir from data.generate; say so when an existing one was made
        with other settings than the config's."""
        data_dir = Path(cfg.data.dir)
        if generate_if_missing(data_dir, cfg.data.generate, self.generator.make, self.data_command(data_dir), log):
            return
        info = dataset_info(data_dir)
        if cfg.data.generate is not None and info:  # a directory without dataset.json is load_data's to refuse
            recorded = self.generator.recorded(info)
            if recorded is not None:
                warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), recorded, log)

    def generator_arguments(self, parser: argparse.ArgumentParser) -> None:
        from kiln.config import add_schema_arguments

        add_schema_arguments(parser, self.generator.schema)

    def make_from_arguments(self, args: argparse.Namespace) -> None:
        from kiln.config import schema_from_arguments
        from kiln.engine.rundir import RunLog

        self.generator.make(args.out, schema_from_arguments(args, self.generator.schema), RunLog())


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
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"not UTF-8 text at byte {err.start}" if isinstance(err, UnicodeDecodeError) else f"not valid JSON: {err}"
        raise KilnError(f"'{path}' is {reason}; regenerate the dataset with kiln data") from None
    except OSError as err:
        raise KilnError(f"'{path}' could not be read ({err.strerror}); check its permissions or regenerate the dataset") from None
    if not isinstance(info, dict):
        raise KilnError(f"'{path}' holds a JSON {type(info).__name__}, not an object describing the dataset; "
                        f"regenerate the dataset with kiln data")
    return info


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
