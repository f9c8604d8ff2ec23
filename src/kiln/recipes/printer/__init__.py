"""printer: simulate a 3D printer, learn its trajectory error, export, stream and compensate (the original guide:
shared/seeds/001_*.txt). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.recipes import Generator, Recipe, lazy
from kiln.recipes.printer.config import PrinterConfig, PrinterGenerator


def compensate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a trained printer run")
    parser.add_argument("gcode", type=Path, help="a G-code file to print with compensation")
    parser.add_argument("--layers", help="layers to simulate (all, sampled:N, first:N, A-B); default: the run's dataset setting")
    parser.add_argument("--out", type=Path, help="directory for compensation.json/png (default RUN/compensation/<file stem>)")


RECIPE = Recipe(
    name="printer", config=PrinterConfig,
    # a directory without dataset.json is not compared with data.generate: load_data refuses it, naming `kiln data`
    generator=Generator(PrinterGenerator, lazy("kiln.recipes.printer.data", "simulate")),
    train_flags={"--hidden-size": "model.hidden_size", "--dropout": "model.dropout", "--num-layers": "model.num_layers",
                 "--loss-type": "model.loss_type", "--loss-ratio": "model.loss_ratio", "--sequence-length": "data.sequence_length",
                 "--seq-len": "data.sequence_length", "--stride": "data.stride", "--accumulation-steps": "train.accumulate_grad_batches",
                 "--early-stopping-patience": "train.patience"},
    commands={"compensate": (compensate_arguments, lazy("kiln.recipes.printer.compensate", "run"))},
)
