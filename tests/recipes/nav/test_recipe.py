"""The nav recipe through the engine: every architecture trains, and the grid size comes from the data."""

import json

import pytest
import torch

from kiln.engine.trainer import fit
from kiln.recipes import load_recipe_config
from kiln.recipes.nav.data import generate_dataset


def train(config_path, run_dir, overrides=()):
    recipe, cfg = load_recipe_config(config_path, list(overrides))
    return fit(cfg, recipe, run_dir)


@pytest.mark.parametrize("overrides", [
    ["model.arch=trm", "model.recursions=2", "model.cycles=2", "model.supervision_steps=2", "train.ema_decay=0.99"],
    ["model.recursions=3", "train.precision=bf16-mixed"],
], ids=["trm-ema", "tied-recursion-bf16"])
def test_architectures_train_end_to_end(tiny_config, tmp_path, overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = train(tiny_config, run_dir, overrides + ["train.max_epochs=2"])
    history = json.loads((run_dir / "history.json").read_text())
    assert history["train_loss"][1] < history["train_loss"][0]
    assert 0 <= results["rollout_success"] <= 1


def test_grid_size_comes_from_the_dataset(tiny_config, tmp_path):
    data_dir = tmp_path / "nav12"
    generate_dataset(data_dir, num_train=64, num_val=16, num_test=16, grid_size=12, seed=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(tiny_config, run_dir, [f"data.dir={data_dir}", "train.max_epochs=1"])
    weights = torch.load(run_dir / "best_model.pt", weights_only=True)
    assert weights["data_info"]["grid_size"] == 12
    assert weights["state_dict"]["model.encoder.position"].shape == (1, 144, 16)


def test_a_changed_generator_setting_warns_instead_of_silently_reusing(tiny_config, tmp_path, capsys):
    data_dir = tmp_path / "made"
    config = [f"data.dir={data_dir}", "data.generate.num_train=64", "data.generate.num_val=16",
              "data.generate.num_test=16", "data.generate.grid_size=5", "train.max_epochs=1"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    train(tiny_config, tmp_path / "a", config)
    assert "not found: generating it" in capsys.readouterr().out
    train(tiny_config, tmp_path / "b", config[:-1] + ["data.generate.num_train=99", "train.max_epochs=1"])
    assert f"Warning: using existing {data_dir}, made with num_train=64 (config: 99)" in capsys.readouterr().out
