"""The nav recipe through the engine: every architecture trains, and the grid size comes from the data."""

import json

import pytest
import torch
import yaml

from kiln.engine.fit import fit
from kiln.recipes import load_recipe_config
from kiln.recipes.nav import RECIPE
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
    headline = RECIPE.headline(results)  # the seam's default: evaluation.headline
    assert headline["value"] == results["rollout_success"] and headline["higher_is_better"]
    assert headline["baseline"] == "shortest path" and headline["baseline_value"] == 1.0  # every test start reaches its goal


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


def with_model(config_path, model, out):
    """A copy of a config file with another model: section (an arch takes only its own keys)."""
    config = yaml.safe_load(config_path.read_text())
    out.write_text(yaml.safe_dump({**config, "model": model}))
    return out


def test_size_agnostic_model_trains_on_mixed_sizes_and_reports_each_layout_and_size(tiny_config, tmp_path):
    data_dir = tmp_path / "mixed"
    generate_dataset(data_dir, num_train=96, num_val=16, num_test=16, grid_size=10, min_grid_size=6,
                     layout="random=1,maze=1", eval_sizes=[6, 14], eval_grids=4, seed=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recurrent = with_model(tiny_config, {"arch": "recurrent", "dim": 8, "channel_mult": 2}, tmp_path / "recurrent.yaml")
    results = train(recurrent, run_dir, [f"data.dir={data_dir}", "train.max_epochs=1"])
    table = results["by_layout_size"]
    assert sorted(table) == ["maze_14", "maze_6", "random_14", "random_6"]
    for key, row in table.items():
        assert f"{row['layout']}_{row['size']}" == key and row["grids"] == 4
        assert 0 <= row["rollout_success"] <= 1 and row["iterations"] >= 1 and row["seconds_per_map"] > 0
    assert "| maze | 14x14 | 4 |" in (run_dir / "report" / "report.md").read_text()
    assert json.loads((run_dir / "test_results.json").read_text())["by_layout_size"] == table


def test_a_fixed_size_model_reports_only_its_own_size(tiny_config, tmp_path):
    data_dir = tmp_path / "mixed"
    generate_dataset(data_dir, num_train=64, num_val=16, num_test=16, grid_size=8, eval_sizes=[8, 12], eval_grids=4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = train(tiny_config, run_dir, [f"data.dir={data_dir}", "train.max_epochs=1"])
    assert sorted(results["by_layout_size"]) == ["random_8"]
