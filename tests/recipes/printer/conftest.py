"""A small simulated printer dataset (three models, three layers each) and a config that trains in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.recipes.printer.config import PrinterGenerator

GENERATOR = {"models": "nautilus,boat,bearing5", "model_layers": 3, "layers": "all"}


@pytest.fixture(scope="session")
def printer_dir(tmp_path_factory) -> Path:
    from kiln.recipes.printer.data import simulate

    out = tmp_path_factory.mktemp("printer") / "tiny"
    simulate(out, PrinterGenerator(**GENERATOR), lambda message: None)
    return out


def write_config(directory: Path, printer_dir: Path) -> Path:
    config = {
        "recipe": "printer",
        "data": {"dir": str(printer_dir), "generate": GENERATOR, "sequence_length": 32, "stride": 48, "position": False,
                 "test_models": ["bearing5"]},
        "model": {"hidden_size": 8, "num_layers": 1, "dropout": 0.0, "burn_in": 8},
        "train": {"batch_size": 64, "max_epochs": 1, "lr": 3e-3, "loggers": [], "threads": 1, "precision": "32"},
    }
    path = directory / "printer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def printer_config(tmp_path, printer_dir) -> Path:
    return write_config(tmp_path, printer_dir)


@pytest.fixture(scope="module")
def printer_config_module(tmp_path_factory, printer_dir) -> Path:
    """printer_config, once per test module (for tests that share one prepared evaluation)."""
    return write_config(tmp_path_factory.mktemp("config"), printer_dir)
