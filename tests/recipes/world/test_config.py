"""World config: the guide's per-module learning rates as train.param_groups (files, flags, phases, dumps), the
recipe's train defaults, and settings no option uses being errors."""

from __future__ import annotations

import pytest
import yaml

from kiln.cli import build_parser, collect_overrides
from kiln.config import dump_config, validate
from kiln.errors import KilnError
from kiln.recipes import load_recipe_config
from kiln.recipes.world import RECIPE
from kiln.recipes.world.config import WorldConfig

from .conftest import TINY_MODEL


def world(**sections):
    return validate({"data": {"generate": None}, "model": TINY_MODEL, **sections}, WorldConfig, "test")


def test_module_lrs_become_param_groups_and_leave_the_dump():
    cfg = world(model={**TINY_MODEL, "encoder_lr": 1e-5}, train={"param_groups": {"model.encoder": {"weight_decay": 0.0}}})
    group = cfg.train.param_groups["model.encoder"]
    assert (group.lr, group.weight_decay) == (1e-5, 0.0)
    dumped = yaml.safe_load(dump_config(cfg))
    assert "encoder_lr" not in dumped["model"]
    assert dumped["train"]["param_groups"]["model.encoder"] == {"lr": 1e-5, "weight_decay": 0.0}
    assert dump_config(validate(dumped, WorldConfig, "config.yaml")) == dump_config(cfg)  # a run's config.yaml means the same


def test_a_phase_may_set_the_group_its_base_config_set_through_model_encoder_lr():
    cfg = world(model={**TINY_MODEL, "encoder_lr": 1e-5}, phases=[{"train": {"param_groups": {"model.encoder": {"lr": 4e-4}}}},
                                                                  {"model": {"decoder_lr": 3e-4}}])
    first, second = (phase.train.param_groups for _, _, phase in cfg.phase_configs())
    assert first["model.encoder"].lr == 4e-4
    assert second["model.encoder"].lr == 1e-5 and second["model.decoder"].lr == 3e-4


def test_the_guide_flags_set_the_param_groups(tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump({"recipe": "world", "data": {"generate": None}, "model": TINY_MODEL}))
    args = build_parser().parse_args(["train", str(path), "--encoder-lr", "5e-4", "--dynamics-lr", "2e-3"])
    _, cfg = load_recipe_config(path, collect_overrides(args, RECIPE))
    groups = cfg.train.param_groups
    assert (groups["model.encoder"].lr, groups["model.dynamics"].lr) == (5e-4, 2e-3) and "model.decoder" not in groups


def test_a_bad_module_lr_names_the_key_it_came_from():
    with pytest.raises(KilnError, match=r"^test: model.encoder_lr: Input should be greater than 0 \(got -1\)$"):
        world(model={**TINY_MODEL, "encoder_lr": -1})


def test_world_runs_pick_their_best_model_by_mean_prediction_psnr():
    assert (world().train.monitor, world().train.mode) == ("val_pred_psnr", "max")
    assert world(train={"monitor": "val_loss", "mode": "min"}).train.monitor == "val_loss"


def test_another_environment_is_an_error_naming_the_one_the_drivers_steer():
    with pytest.raises(KilnError, match=r"data.generate.env: Input should be 'CarRacing-v3' \(got 'CartPole-v1'\)"):
        validate({"data": {"generate": {"env": "CartPole-v1"}}, "model": TINY_MODEL | {"decoder": {"stages": [8, 8], "init_size": 16}}},
                 WorldConfig, "test")
