"""traffic: probabilistic road-speed forecasting with STMGT (the original guide: shared/seeds/000_*.txt).
Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Generator, Recipe, lazy
from kiln.recipes.traffic.config import CityGenerator, TrafficConfig


def prepare_data(cfg: TrafficConfig, log) -> None:
    """Recipe.generate_if_missing, naming both sources when data.dir is missing and there is nothing to simulate."""
    data_dir = Path(cfg.data.dir)
    if cfg.data.generate is None and not data_dir.exists():
        raise KilnError(f"data.dir '{data_dir}' does not exist; make it with: {RECIPE.data_command(data_dir)} "
                        f"or kiln data traffic --los-loop PATH --out {data_dir}")
    RECIPE.generate_if_missing(cfg, log)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--simulate", action="store_true", help="simulate the 62-node city (the embedded default data)")
    source.add_argument("--los-loop", type=Path, metavar="DIR",
                        help="convert Los-loop (los_speed.csv, los_adj.csv from github.com/lehaifeng/T-GCN data/)")
    parser.add_argument("--tgcn-references", action="store_true",
                        help="los-loop: also fit T-GCN's persistence and linear-SVR baselines (minutes) into dataset.json")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="--tgcn-references: detectors fitted in parallel (default: the cores this process may use)")
    add_schema_arguments(parser.add_argument_group("simulate"), CityGenerator)


def make_data(args: argparse.Namespace) -> None:
    """`kiln data traffic`: simulate the city, or with --los-loop convert T-GCN's Los-loop folder."""
    if args.los_loop is None:
        RECIPE.make_from_arguments(args)
        return
    from kiln.engine.rundir import RunLog
    from kiln.recipes.traffic.data import convert_los_loop

    if args.jobs is not None and args.jobs < 1:
        raise KilnError(f"--jobs {args.jobs}: give a positive number of parallel fits")
    convert_los_loop(args.los_loop, args.out, args.tgcn_references, RunLog(), args.jobs)


RECIPE = Recipe(
    name="traffic", config=TrafficConfig,
    generator=Generator(CityGenerator, lazy("kiln.recipes.traffic.data", "simulate_dataset"), flags="--simulate",
                        recorded=lambda info: info if info.get("source") == "simulated-city" else None),
    prepare_data=prepare_data, data_arguments=data_arguments, make_data=make_data,
)
