"""nav: grid navigation policies (seed 004, TRM navigation). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Recipe, dataset_info, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.nav.config import NavConfig, NavGenerator


def generate(out: Path, settings: NavGenerator, log) -> dict:
    from kiln.recipes.nav.data import generate_dataset

    try:
        info = generate_dataset(out, **settings.model_dump())
    except FileExistsError as err:
        raise KilnError(f"{err}; pass another --out or delete it") from None
    except (RuntimeError, ValueError) as err:  # too few distinct grids at this size; an unreadable maps folder
        raise KilnError(f"kiln data nav: {err}") from None
    counts = info["counts"]
    sides = f"{settings.min_grid_size}..{settings.grid_size}" if settings.min_grid_size else str(settings.grid_size)
    log(f"Wrote {out}: {counts['train']} train{' (8 symmetries each)' if settings.augment else ''}, {counts['val']} val, "
        f"{counts['test']} test {settings.layout} grids of side {sides} in {info['generation_seconds']:.1f}s; "
        f"{info['multi_optimal_fraction']:.0%} of cells have more than one optimal action")
    if info["eval_groups"]:
        log(f"Held-out sets in {out / 'eval'}: " + ", ".join(f"{key} ({n})" for key, n in info["eval_groups"].items()))
    return info


def prepare_data(cfg: NavConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    if generate_if_missing(data_dir, cfg.data.generate, generate, f"kiln data nav --out {data_dir} (see kiln data nav --help)", log):
        return
    info = dataset_info(data_dir, "nav", "kiln data nav --out DIR")
    if cfg.data.generate is not None:
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), {**info, "num_train": info.get("num_train_base")}, log)


def load_data(cfg: NavConfig, log=print):
    from kiln.engine.task import Splits
    from kiln.recipes.nav.data import load_split
    from kiln.recipes.nav.task import to_tensors

    data_dir = Path(cfg.data.dir)
    info = dataset_info(data_dir, "nav", "kiln data nav --out DIR")
    try:
        splits = {name: to_tensors(load_split(data_dir, name)) for name in ("train", "val", "test")}
    except ValueError as err:
        raise KilnError(f"{err}; regenerate the dataset with kiln data nav --out {data_dir}") from None
    return Splits(**splits, info={**info, "num_train": len(splits["train"]["cells"])})


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    add_schema_arguments(parser, NavGenerator)


def make_data(args: argparse.Namespace) -> None:
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog

    generate(args.out, schema_from_arguments(args, NavGenerator), RunLog())


def evaluate_arguments(parser) -> None:
    parser.add_argument("--map", type=Path, help="a MovingAI .map file to roll the policy out on")
    parser.add_argument("--scen", type=Path, help="a MovingAI .scen file with start/goal pairs for --map")
    parser.add_argument("--num-pairs", type=int, help="start/goal pairs sampled when --scen is absent (default 200)")


RECIPE = Recipe(
    name="nav", config=NavConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.nav.task", "build_task"),
    evaluate=lazy("kiln.recipes.nav.task", "evaluate"),
    report=lazy("kiln.recipes.nav.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
    # the seed's train.py flags that are nav model keys
    train_flags={"--dim": "model.dim", "--depth": "model.depth", "--dropout": "model.dropout"},
    evaluate_arguments=evaluate_arguments,
)
