from pathlib import Path

import pytest

from kiln.config import parse_override
from kiln.errors import KilnError
from kiln.recipes import load_recipe_config


def load_config(path, overrides=()):
    return load_recipe_config(path, list(overrides))[1]

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.recipe == path.parent.name
    assert cfg.name == path.stem


def test_overrides_are_typed_and_nested(tiny_config):
    cfg = load_config(tiny_config, ["train.lr=5e-4", "model.dim=128", "train.scheduler.name=linear_decay",
                                    "train.precision=bf16-mixed", "train.patience=null"])
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.model.dim == 128
    assert cfg.train.scheduler.name == "linear_decay"
    assert cfg.train.precision == "bf16-mixed"
    assert cfg.train.patience is None


def test_yaml_exponent_without_dot_is_a_number():
    assert parse_override("train.lr=5e-4") == (["train", "lr"], 5e-4)
    assert parse_override("train.loggers=[csv, tensorboard]") == (["train", "loggers"], ["csv", "tensorboard"])


@pytest.mark.parametrize("override, expected", [
    ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("model.dimm=3", "did you mean 'model.dim'?"),
    ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
    ("train.lr.x=1", "unknown config key 'train.lr.x'; 'train.lr' has no sub-keys"),
    ("train.lr=abc", "train.lr: Input should be a valid number"),
    ("train.optimizer=lion", "train.optimizer: Input should be 'adamw', 'adam' or 'sgd'"),
    ("train.batch_size=0", "train.batch_size: Input should be greater than 0"),
    ("lr", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(tiny_config, override, expected):
    with pytest.raises(KilnError, match=None) as err:
        load_config(tiny_config, [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path, tiny_config):
    text = tiny_config.read_text().replace("max_epochs", "max_epoch")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(KilnError, match=r"unknown config key 'train.max_epoch'; did you mean 'train.max_epochs'\?"):
        load_config(bad)


@pytest.mark.parametrize("text, expected", [
    ("recipe: nav\ntrain: [1, 2\n", "is not valid YAML"),
    ("- just a list\n", "must hold a mapping"),
    ("data: {}\n", "has no 'recipe:' key"),
    ("recipe: painter\n", "unknown recipe 'painter'; available: nav"),
    ("recipe: nav\ntrain: {monitor: loss}\n", "train.monitor must name a train_* or val_* metric"),
])
def test_bad_files(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(KilnError) as err:
        load_config(path)
    assert expected in str(err.value)


def test_json_configs_are_accepted(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"recipe": "nav", "train": {"lr": 0.01}}')
    assert load_config(path).train.lr == 0.01


def test_missing_file():
    with pytest.raises(KilnError, match="not found"):
        load_config(Path("no/such.yaml"))


def test_a_key_the_chosen_arch_ignores_is_an_error():
    """by_arch: each architecture has exactly its own keys, with the same one-line errors as any section."""
    from typing import Literal

    from kiln.config import RunConfig, Section, by_arch, validate

    class Wide(Section):
        arch: Literal["wide"] = "wide"
        width: int = 8

    class Deep(Section):
        arch: Literal["deep"] = "deep"
        depth: int = 2

    class Cfg(RunConfig):
        recipe: str = "toy"
        data: Section = Section()
        model: by_arch(Wide, Deep) = Wide()

    assert validate({"model": {"width": 4}}, Cfg, "x").model.width == 4  # no arch: the first member's
    assert validate({"model": {"arch": "deep", "depth": 5}}, Cfg, "x").model.depth == 5
    with pytest.raises(KilnError, match=r"^x: unknown config key 'model.width' \(model.arch 'deep' has no width\); "
                                        r"valid keys here: arch, depth$"):
        validate({"model": {"arch": "deep", "width": 4}}, Cfg, "x")
    with pytest.raises(KilnError, match=r"x: model.depth: Input should be a valid integer"):
        validate({"model": {"arch": "deep", "depth": "many"}}, Cfg, "x")
    with pytest.raises(KilnError, match=r"^x: model.arch: Input should be .wide., .deep. \(got .tall.\)$"):
        validate({"model": {"arch": "tall"}}, Cfg, "x")
    from kiln.config import apply_overrides

    with pytest.raises(KilnError, match=r"unknown config key 'model.width' \(model.arch 'deep' has no width\)"):
        apply_overrides({"model": {"arch": "deep"}}, ["model.width=3"], Cfg)
    with pytest.raises(KilnError, match=r"did you mean 'model.depth'\?"):
        apply_overrides({"model": {"arch": "deep"}}, ["model.depht=3"], Cfg)


@pytest.mark.parametrize("override", ["train.batch_size=true", "train.lr=false", "train.patience=true"])
def test_a_boolean_is_not_a_number(tiny_config, override):
    with pytest.raises(KilnError, match=rf"{override.split('=')[0]}: Input should be a valid (integer|number).* \(got '(true|false)'\)"):
        load_config(tiny_config, [override])


def test_an_override_reaches_a_param_group_whose_prefix_has_dots(tiny_config):
    cfg = load_config(tiny_config, ["train.param_groups.model.blocks.lr=1e-4", "train.param_groups.model.head={weight_decay: 0.0}"])
    assert cfg.train.param_groups["model.blocks"].lr == pytest.approx(1e-4)
    assert cfg.train.param_groups["model.head"].weight_decay == 0.0
    # 'lrr' is no ParamGroup key, so 'model.blocks.lrr' is taken as the group's prefix, whose value must be a group
    with pytest.raises(KilnError, match=r"train.param_groups.model.blocks.lrr: Input should be a valid dictionary or instance of ParamGroup"):
        load_config(tiny_config, ["train.param_groups.model.blocks.lrr=1e-4"])
