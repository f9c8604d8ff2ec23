"""printer: simulate a 3D printer, learn its trajectory error, export, stream and compensate (seed 001).
Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Recipe, dataset_info, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.printer.config import PrinterConfig, PrinterGenerator


def simulate(out: Path, settings: PrinterGenerator, log) -> dict:
    """Stage 1 (`kiln data printer`): read or generate every model's G-code, simulate the chosen layers, write."""
    import time

    import numpy as np

    from kiln.recipes.printer.data import write_simulation
    from kiln.recipes.printer.sim import Printer, model_sources, simulate_moves

    started = time.perf_counter()
    printer = Printer(settings)
    trajectories, sources = [], {}
    for name, moves in model_sources(settings.models, settings.model_layers):
        if name in sources:
            raise KilnError(f"two models are named '{name}'; rename one of the G-code files")
        for line, reason in moves.errors[:5]:
            log(f"Warning: {name} line {line}: {reason} (skipped)")
        if len(moves.errors) > 5:
            log(f"Warning: {name}: {len(moves.errors) - 5} more malformed lines skipped")
        layers = simulate_moves(printer, moves, name, settings.layers)
        trajectories += layers
        sources[name] = {"moves": len(moves), "layers_in_file": len(moves.layer_z), "layers_simulated": [t.layer for t in layers],
                         "samples": int(sum(len(t.time) for t in layers)), "malformed_lines": moves.errors[:100],
                         "ignored_commands": dict(moves.ignored.most_common())}
    if not trajectories:
        raise KilnError(f"no layer was simulated (layers '{settings.layers}'); choose other layers")
    samples = sum(len(t.time) for t in trajectories)
    error = np.concatenate([t.error for t in trajectories])
    info = {"source": "simulated-printer", **settings.model_dump(), "models_simulated": sources, "num_trajectories": len(trajectories),
            "num_samples": int(samples), "error_rms_mm": float(np.sqrt((error ** 2).sum(1).mean())),
            "generation_seconds": round(time.perf_counter() - started, 3)}
    write_simulation(out, trajectories, info)
    log(f"Wrote {out}: {len(trajectories)} layers of {len(sources)} models, {samples:,} samples at "
        f"{settings.sample_rate:g} Hz ({samples / settings.sample_rate / 60:.1f} printing minutes), error RMS "
        f"{info['error_rms_mm'] * 1000:.1f} um, in {info['generation_seconds']:.1f}s")
    return info


def prepare_data(cfg: PrinterConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    if generate_if_missing(data_dir, cfg.data.generate, simulate, f"kiln data printer --out {data_dir}", log):
        return
    info = dataset_info(data_dir, "printer", "kiln data printer --out DIR")
    if cfg.data.generate is not None:
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), info, log)


def load_data(cfg: PrinterConfig, log=print):
    """Stage 2: windows and splits of the simulated layers (prepared once per setting into processed/)."""
    from kiln.engine.task import Splits
    from kiln.recipes.printer.data import SPLITS, prepare, read_split, window_tensors

    data_dir = Path(cfg.data.dir)
    stats = prepare(data_dir, cfg.data, log)
    splits = {name: window_tensors(read_split(data_dir / "processed" / name), stats) for name in SPLITS}
    return Splits(**splits, info=stats)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    add_schema_arguments(parser, PrinterGenerator)


def make_data(args: argparse.Namespace) -> None:
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog

    simulate(args.out, schema_from_arguments(args, PrinterGenerator), RunLog())


def compensate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a trained printer run")
    parser.add_argument("gcode", type=Path, help="a G-code file to print with compensation")
    parser.add_argument("--layers", help="layers to simulate (all, sampled:N, first:N, A-B); default: the run's dataset setting")
    parser.add_argument("--out", type=Path, help="directory for compensation.json/png (default RUN/compensation/<file stem>)")


RECIPE = Recipe(
    name="printer", config=PrinterConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.printer.task", "PrinterTask"),
    evaluate=lazy("kiln.recipes.printer.task", "evaluate"),
    report=lazy("kiln.recipes.printer.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
    train_flags={"--hidden-size": "model.hidden_size", "--dropout": "model.dropout", "--num-layers": "model.num_layers", "--loss-type": "model.loss_type",
                 "--loss-ratio": "model.loss_ratio", "--sequence-length": "data.sequence_length", "--seq-len": "data.sequence_length",
                 "--stride": "data.stride", "--accumulation-steps": "train.accumulate_grad_batches",
                 "--early-stopping-patience": "train.patience"},
    commands={"compensate": (compensate_arguments, lazy("kiln.recipes.printer.compensate", "run"))},
)
