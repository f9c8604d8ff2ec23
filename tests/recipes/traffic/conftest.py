"""A tiny simulated city and a traffic config that trains in seconds on one CPU thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def city_dir(tmp_path_factory) -> Path:
    from kiln.recipes.traffic.config import CityGenerator
    from kiln.recipes.traffic.data import simulate_dataset

    out = tmp_path_factory.mktemp("traffic") / "city"
    simulate_dataset(out, CityGenerator(days=4, seed=5), lambda message: None)
    return out


@pytest.fixture
def traffic_config(tmp_path, city_dir) -> Path:
    config = {
        "recipe": "traffic",
        "data": {"dir": str(city_dir), "generate": None},
        "model": {"hidden_dim": 16, "num_heads": 2, "num_blocks": 1, "mixture_components": 2, "seq_len": 12, "pred_len": 4},
        "train": {"batch_size": 32, "max_epochs": 2, "lr": 3e-3, "loggers": [], "threads": 1, "monitor": "val_mae",
                  "log_grad_norm": True},
    }
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
