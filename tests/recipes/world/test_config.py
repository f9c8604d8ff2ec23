"""World config: the guide's per-module learning rates as train.param_groups (files, flags, phases, dumps), the
recipe's train defaults, and settings no option uses being errors."""

from __future__ import annotations

import pytest
import yaml

from kiln.cli import build_parser, collect_overrides
from kiln.config import validate
from kiln.errors import KilnError
from kiln.recipes import load_recipe_config
from kiln.recipes.world import RECIPE
from kiln.recipes.world.config import WorldConfig

from .conftest import TINY_MODEL


def world(**sections):
    return validate({"data": {"generate": None}, "model": TINY_MODEL, **sections}, WorldConfig, "test")


def test_the_guide_flags_set_the_param_groups(tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump({"recipe": "world", "data": {"generate": None}, "model": TINY_MODEL,
                                    "train": {"param_groups": {"model.encoder": {"weight_decay": 0.0}}}}))
    args = build_parser().parse_args(["train", str(path), "--encoder-lr", "5e-4", "--dynamics-lr", "2e-3"])
    _, cfg = load_recipe_config(path, collect_overrides(args, RECIPE))
    groups = cfg.train.param_groups
    assert (groups["model.encoder"].lr, groups["model.dynamics"].lr) == (5e-4, 2e-3) and "model.decoder" not in groups
    assert groups["model.encoder"].weight_decay == 0.0  # the flag sets the group's lr, the rest of it stays
    args = build_parser().parse_args(["train", str(path), "--decoder-lr", "-1"])
    with pytest.raises(KilnError, match=r"train.param_groups.model.decoder.lr: Input should be greater than 0"):
        load_recipe_config(path, collect_overrides(args, RECIPE))


def test_the_old_module_lr_keys_are_unknown():
    with pytest.raises(KilnError, match=r"model.encoder_lr"):
        world(model={**TINY_MODEL, "encoder_lr": 1e-5})


def test_world_runs_pick_their_best_model_by_mean_prediction_psnr():
    assert (world().train.monitor, world().train.mode) == ("val_pred_psnr", "max")
    assert world(train={"monitor": "val_loss", "mode": "min"}).train.monitor == "val_loss"


def test_another_environment_is_an_error_naming_the_one_the_drivers_steer():
    with pytest.raises(KilnError, match=r"data.generate.env: Input should be 'CarRacing-v3' \(got 'CartPole-v1'\)"):
        validate({"data": {"generate": {"env": "CartPole-v1"}}, "model": TINY_MODEL | {"decoder": {"stages": [8, 8], "init_size": 16}}},
                 WorldConfig, "test")
