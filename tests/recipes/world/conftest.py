"""A tiny CarRacing collection (4 short episodes, 2 workers) shared by the world tests, and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.recipes.world.config import CollectSettings

TINY_MODEL = {"latent_dim": 4, "context_frames": 2, "encoder": {"stages": [8, 8]}, "dynamics": {"num_layers": 1, "hidden_dim": 8},
              "decoder": {"stages": [8, 8], "init_size": 8}}
TINY_COLLECT = CollectSettings(episodes=4, steps=30, size=32, workers=2, val_episodes=1, test_episodes=1, intro_frames=50, seed=5)


@pytest.fixture(scope="session")
def carracing_dir(tmp_path_factory) -> Path:
    from kiln.recipes.world.data import collect_dataset

    path = tmp_path_factory.mktemp("world") / "tiny"
    collect_dataset(path, TINY_COLLECT, lambda message: None)
    return path


@pytest.fixture
def world_config(tmp_path, carracing_dir) -> Path:
    config = {
        "recipe": "world",
        "data": {"dir": str(carracing_dir), "generate": None, "sequence_length": 4, "eval_horizon": 10, "eval_stride": 4},
        "model": TINY_MODEL,
        "train": {"batch_size": 8, "eval_batch_size": 16, "max_steps": 6, "max_epochs": 5, "lr": 3e-3, "loggers": [], "threads": 1,
                  "val_every_n_steps": 3, "monitor": "val_pred_psnr", "mode": "max",
                  "scheduler": {"name": "warmup_cosine", "warmup": 2, "min_lr": 1e-5}},
    }
    path = tmp_path / "tiny_world.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
