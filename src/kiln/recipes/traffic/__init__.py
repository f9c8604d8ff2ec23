"""traffic: probabilistic road-speed forecasting with STMGT (seed 000). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kiln.recipes import Recipe, dataset_info, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.traffic.config import CityGenerator, TrafficConfig


def simulate(out: Path, settings: CityGenerator, log) -> dict:
    import time

    from kiln.recipes.traffic.data import write_dataset
    from kiln.recipes.traffic.sim import segment_records, simulate_city

    started = time.perf_counter()
    records, nodes, edges = simulate_city(**settings.model_dump(exclude={"per_segment"}))
    if settings.per_segment:  # the graph is then in the records: no edges.csv
        records, edges = segment_records(records, edges, settings.seed), None
    info = {"source": "simulated-city", **settings.model_dump(), "unit": "km/h", "num_nodes": len(nodes),
            "num_edges": int(records[["node_a_id", "node_b_id"]].drop_duplicates().shape[0]) if edges is None else len(edges),
            "num_steps": int(records["timestamp"].nunique()), "generation_seconds": round(time.perf_counter() - started, 3)}
    write_dataset(out, records, nodes, edges, info)
    shape = "per-segment records" if settings.per_segment else "records"
    log(f"Wrote {out}: simulated city, {len(nodes)} nodes, {info['num_edges']} edges, {settings.days} days of "
        f"{settings.interval_minutes}-minute {shape} ({len(records):,} rows) in {info['generation_seconds']:.2f}s")
    return info


def prepare_data(cfg: TrafficConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    command = f"kiln data traffic --simulate --out {data_dir} or kiln data traffic --los-loop PATH --out {data_dir}"
    if generate_if_missing(data_dir, cfg.data.generate, simulate, command, log):
        return
    info = dataset_info(data_dir)
    if cfg.data.generate is not None and info.get("source") == "simulated-city":
        # cities written before per-segment records existed hold records per node
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), {"per_segment": False, **info}, log)


def load_data(cfg: TrafficConfig, log=print):
    import torch

    from kiln.engine.task import Splits
    from kiln.recipes.traffic.data import build_splits, load_series

    series = load_series(Path(cfg.data.dir), log)
    arrays, info = build_splits(series, cfg.data.protocol, cfg.model.seq_len, cfg.model.pred_len,
                                cfg.data.val_fraction, cfg.data.test_fraction, log)
    if cfg.model.use_weather and cfg.model.arch == "stmgt" and not info["has_weather"]:
        log("No weather columns in this dataset: STMGT runs without its weather branch")
    tensors = {name: {k: torch.from_numpy(v) for k, v in split.items()} for name, split in arrays.items()}
    return Splits(**tensors, info=info)


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
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog

    log = RunLog()
    if args.los_loop is not None:
        from kiln.recipes.traffic.data import convert_los_loop

        if args.jobs is not None and args.jobs < 1:
            from kiln.errors import KilnError

            raise KilnError(f"--jobs {args.jobs}: give a positive number of parallel fits")
        jobs = args.jobs or len(os.sched_getaffinity(0))
        info = convert_los_loop(args.los_loop, args.out, args.tgcn_references, log, jobs)
        log(f"Wrote {args.out}: Los-loop, {info['num_nodes']} detectors, {info['num_edges']} edges, "
            f"{info['num_steps']} five-minute steps (mph)")
        return
    simulate(args.out, schema_from_arguments(args, CityGenerator), log)


RECIPE = Recipe(
    name="traffic", config=TrafficConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.traffic.task", "TrafficTask"),
    evaluate=lazy("kiln.recipes.traffic.task", "evaluate"),
    report=lazy("kiln.recipes.traffic.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
)
