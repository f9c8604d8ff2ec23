"""nav: grid navigation policies (seed 004, TRM navigation). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Recipe, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.nav.config import NavConfig, NavGenerator


def generate(out: Path, settings: NavGenerator, log) -> dict:
    from kiln.recipes.nav.data import generate_dataset

    try:
        info = generate_dataset(out, **settings.model_dump())
    except FileExistsError as err:
        raise KilnError(f"{err}; pass another --out or delete it") from None
    counts = info["counts"]
    log(f"Wrote {out}: {counts['train']} train{' (8 symmetries each)' if settings.augment else ''}, {counts['val']} val, "
        f"{counts['test']} test {settings.grid_size}x{settings.grid_size} grids in {info['generation_seconds']:.1f}s; "
        f"{info['multi_optimal_fraction']:.0%} of cells have more than one optimal action")
    return info


def prepare_data(cfg: NavConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    if generate_if_missing(data_dir, cfg.data.generate, generate, f"kiln data nav --out {data_dir} (see kiln data nav --help)", log):
        return
    info_path = data_dir / "dataset.json"
    if not info_path.is_file():
        raise KilnError(f"data.dir '{data_dir}' has no dataset.json, so it is not a nav dataset; make one with: kiln data nav --out DIR")
    info = json.loads(info_path.read_text())
    if cfg.data.generate is not None:
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), {**info, "num_train": info.get("num_train_base")}, log)


def load_data(cfg: NavConfig, log=print):
    from kiln.engine.task import Splits
    from kiln.recipes.nav.data import load_split
    from kiln.recipes.nav.task import to_tensors

    data_dir = Path(cfg.data.dir)
    info = json.loads((data_dir / "dataset.json").read_text())
    try:
        splits = {name: to_tensors(load_split(data_dir, name)) for name in ("train", "val", "test")}
    except ValueError as err:
        raise KilnError(f"{err}; regenerate the dataset with kiln data nav --out {data_dir}") from None
    return Splits(**splits, info={**info, "num_train": len(splits["train"]["cells"])})


def data_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = NavGenerator()
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    parser.add_argument("--num-train", type=int, default=defaults.num_train, help="base training grids")
    parser.add_argument("--num-val", type=int, default=defaults.num_val, help="validation grids")
    parser.add_argument("--num-test", type=int, default=defaults.num_test, help="test grids")
    parser.add_argument("--grid-size", type=int, default=defaults.grid_size)
    parser.add_argument("--obstacle-density", type=float, default=defaults.obstacle_density)
    parser.add_argument("--augment", action="store_true", help="add the 8 symmetries of each training grid")
    parser.add_argument("--seed", type=int, default=defaults.seed)


def make_data(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from kiln.engine.rundir import RunLog

    fields = {k: getattr(args, k) for k in NavGenerator.model_fields}
    try:
        settings = NavGenerator(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise KilnError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (got {first['input']!r})") from None
    generate(args.out, settings, RunLog())


RECIPE = Recipe(
    name="nav", config=NavConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.nav.task", "build_task"),
    evaluate=lazy("kiln.recipes.nav.task", "evaluate"),
    report=lazy("kiln.recipes.nav.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
)
