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
    source.add_argument("--speed-csv", type=Path, metavar="FILE",
                        help="convert any city in T-GCN's layout: a speed CSV (one row per time step, one column per "
                             "sensor, header row optional); needs --adjacency-csv and --interval-minutes")
    city = parser.add_argument_group("--speed-csv (a T-GCN-format city)")
    city.add_argument("--adjacency-csv", type=Path, metavar="FILE", help="the N x N edge weights (no header)")
    city.add_argument("--no-header", action="store_true", help="the speed CSV has no header row of sensor ids "
                      "(T-GCN's files have one); the sensors are then numbered 0..N-1")
    city.add_argument("--unit", choices=("kmh", "mph"), default="kmh", help="the speeds' unit (default: kmh)")
    city.add_argument("--start", metavar="TIMESTAMP",
                      help="the first row's date and time, for the hour and day-of-week features (default: 2000-01-03, a Monday)")
    city.add_argument("--zero-is-missing", action="store_true",
                      help="a speed of 0 is no observation (as in SZ-taxi): stored as missing, imputed as an input, never a target")
    parser.add_argument("--tgcn-references", action="store_true",
                        help="los-loop, --speed-csv: also fit T-GCN's persistence and linear-SVR baselines (minutes) into dataset.json")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="--tgcn-references: detectors fitted in parallel (default: the cores this process may use)")
    add_schema_arguments(parser.add_argument_group("simulate"), CityGenerator)


CITY_FLAGS = ("adjacency_csv", "no_header", "start", "zero_is_missing")  # and --unit, which has a default


def make_data(args: argparse.Namespace) -> None:
    """`kiln data traffic`: simulate the city, or convert T-GCN's Los-loop folder (--los-loop) or any city in its
    layout (--speed-csv)."""
    given = [f"--{name.replace('_', '-')}" for name in CITY_FLAGS if getattr(args, name) not in (None, False)]
    if args.speed_csv is None and (given or args.unit != "kmh"):
        raise KilnError(f"{', '.join(given) or '--unit'}: only for --speed-csv; drop them")
    if args.speed_csv is None and args.los_loop is None:
        RECIPE.make_from_arguments(args)
        return
    shared = ("interval_minutes",) if args.speed_csv is not None else ()  # also the rows' interval of a --speed-csv
    simulate_only = [f"--{name.replace('_', '-')}" for name in CityGenerator.model_fields
                     if name not in shared and getattr(args, name) is not None]
    if simulate_only:
        raise KilnError(f"{', '.join(simulate_only)}: only for --simulate; drop them")
    from kiln.engine.rundir import RunLog
    from kiln.recipes.traffic.data import DEFAULT_START, convert_los_loop, convert_tgcn_city

    if args.jobs is not None and args.jobs < 1:
        raise KilnError(f"--jobs {args.jobs}: give a positive number of parallel fits")
    if args.los_loop is not None:
        convert_los_loop(args.los_loop, args.out, args.tgcn_references, RunLog(), args.jobs)
        return
    missing = [flag for flag, value in (("--adjacency-csv", args.adjacency_csv), ("--interval-minutes", args.interval_minutes))
               if value is None]
    if missing:
        raise KilnError(f"--speed-csv needs {' and '.join(missing)} (the N x N edge weights; the minutes between two rows)")
    convert_tgcn_city(args.speed_csv, args.adjacency_csv, args.out, interval_minutes=args.interval_minutes, unit=args.unit,
                      start=args.start or DEFAULT_START, zero_is_missing=args.zero_is_missing, tgcn_references=args.tgcn_references,
                      log=RunLog(), jobs=args.jobs, header=not args.no_header)


RECIPE = Recipe(
    name="traffic", config=TrafficConfig,
    generator=Generator(CityGenerator, lazy("kiln.recipes.traffic.data", "simulate_dataset"), flags="--simulate",
                        recorded=lambda info: info if info.get("source") == "simulated-city" else None),
    prepare_data=prepare_data, data_arguments=data_arguments, make_data=make_data,
)
