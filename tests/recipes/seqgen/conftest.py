"""A tiny synthetic string dataset and a seqgen config that trains in seconds on one CPU thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the configs ask (train.threads: 1): the evaluation's small discriminators and the LSTM
    steps can run many times slower with a spare OpenMP thread spin-waiting on a busy machine (the evaluation
    test once took 198 s with 2 threads at load 4; 33 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def strings_dir(tmp_path_factory) -> Path:
    from kiln.recipes.seqgen.config import SyntheticStrings
    from kiln.recipes.seqgen.data import generate_dataset

    out = tmp_path_factory.mktemp("seqgen") / "strings"
    settings = SyntheticStrings(num_sequences=48, profile_points=16, seed=3, train_size=32, val_size=8, split_seed=1)
    generate_dataset(out, settings, lambda message: None)
    return out


@pytest.fixture
def seqgen_config(tmp_path, strings_dir) -> Path:
    config = {
        "recipe": "seqgen",
        "data": {"dir": str(strings_dir), "generate": None, "split": {"train_size": 32, "val_size": 8, "split_seed": 1}},
        "model": {"hidden_size": 8, "num_layers": 2, "dropout": 0.0, "loss": "combined", "max_lag": 5},
        "train": {"batch_size": 8, "max_epochs": 2, "lr": 3e-3, "loggers": [], "threads": 1, "precision": "32",
                  "log_test_metrics": True, "checkpoint_every_n_epochs": 1},
    }
    path = tmp_path / "seqgen.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
