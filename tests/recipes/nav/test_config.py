"""The nav config: one model section per arch with exactly the keys that arch reads, and nav's train defaults."""

from pathlib import Path

import pytest
import yaml

from kiln.errors import KilnError
from kiln.recipes import load_recipe_config
from kiln.recipes.nav.config import MixerModel, RecurrentModel, TrmModel

CONFIGS = sorted(Path(__file__).resolve().parents[3].joinpath("configs", "nav").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_shipped_nav_config_validates_with_its_arch_keys(path):
    _, cfg = load_recipe_config(path)
    written = yaml.safe_load(path.read_text())["model"]
    section = {"mixer": MixerModel, "trm": TrmModel, "recurrent": RecurrentModel}[written.get("arch", "mixer")]
    assert type(cfg.model) is section
    assert all(getattr(cfg.model, key) == value for key, value in written.items())
    assert (cfg.train.monitor, cfg.train.mode) == ("val_rollout_success", "max")  # nav's defaults, not the engine's


def test_a_key_the_recurrent_arch_ignores_is_a_one_line_error(tmp_path, capsys):
    from kiln.cli import main

    path = tmp_path / "nav.yaml"
    path.write_text("recipe: nav\n")
    message = ("unknown config key 'model.depth' (model.arch 'recurrent' has no depth); "
               "valid keys here: arch, dim, channel_mult, iterations")
    with pytest.raises(KilnError) as err:
        load_recipe_config(path, ["model.arch=recurrent", "model.depth=3"])
    assert str(err.value) == message
    path.write_text("recipe: nav\nmodel: {arch: recurrent, depth: 3}\n")
    with pytest.raises(KilnError) as err:
        load_recipe_config(path)
    assert str(err.value) == f"{path}: {message}"
    any_size = next(config for config in CONFIGS if config.stem == "any_size")  # model.arch: recurrent
    assert main(["train", str(any_size), "--depth", "3", "--run-dir", str(tmp_path / "run")]) == 2  # the guide's flag
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_each_arch_has_exactly_the_keys_its_model_reads():
    assert list(MixerModel.model_fields) == ["arch", "dim", "depth", "dropout", "token_hidden", "channel_mult", "recursions"]
    assert set(TrmModel.model_fields) == set(MixerModel.model_fields) | {"cycles", "supervision_steps"}
    assert list(RecurrentModel.model_fields) == ["arch", "dim", "channel_mult", "iterations"]


def test_a_config_s_own_monitor_wins_over_nav_s_default(tiny_config):
    _, cfg = load_recipe_config(tiny_config, ["train.monitor=val_loss", "train.mode=min"])
    assert (cfg.train.monitor, cfg.train.mode) == ("val_loss", "min")
