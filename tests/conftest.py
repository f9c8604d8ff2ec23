"""Shared fixtures: a tiny nav config that trains in a second or two on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

# The fuzzers' (tests/fuzz/) profiles, here so that hypothesis' --hypothesis-profile, applied after this file loads,
# can pick another: `make test` (and CI) draws the same examples every run, so a run passes or fails on the code, not
# on the draw; `make fuzz` (--hypothesis-profile=explore) draws new ones and prints the blob that replays a failure.
COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], print_blob=True)
settings.register_profile("kiln", derandomize=True, **COMMON)
settings.register_profile("explore", derandomize=False, **COMMON)
settings.load_profile("kiln")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    from kiln.recipes.nav.data import generate_dataset

    path = tmp_path_factory.mktemp("data") / "nav6"
    generate_dataset(path, num_train=192, num_val=64, num_test=64, grid_size=6, obstacle_density=0.2, seed=3)
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_data_dir) -> Path:
    config = {
        "recipe": "nav",
        "data": {"dir": str(tiny_data_dir), "generate": None},
        "model": {"dim": 16, "depth": 1, "token_hidden": 16, "channel_mult": 2, "dropout": 0.1},
        # precision 32, as the engine tests' toy config: tests compare two fresh runs of this config (resumed against
        # uninterrupted), and auto's timing at each first start may pick bf16 for one and fp32 for the other on a
        # CPU with bf16 (it did: 3.2 vs 4.3 ms a step, then 3.6 vs 2.7)
        "train": {"batch_size": 32, "max_epochs": 3, "lr": 3e-3, "loggers": [], "threads": 1, "monitor": "val_loss", "mode": "min",
                  "scheduler": {"name": "warmup_cosine", "warmup": 0.1}, "precision": "32"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
