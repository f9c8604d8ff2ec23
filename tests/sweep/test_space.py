import itertools
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.sweep.launch import define
from kiln.sweep.space import grid_axes, make_sweep, split_top_level

ROOT = Path(__file__).resolve().parents[2]


def sweep_of(config, grid=None, space=None, **kwargs):
    settings = dict(grid=grid, space=space, trials=None, objective=None, direction=None, sampler=None, pruner=None,
                    retries=None, log=lambda line: None)
    settings.update(kwargs)
    return define(str(config), [], **settings)


def test_the_grid_enumerates_its_full_product_typed_by_the_schema(sweep_config):
    sweep = sweep_of(sweep_config, ["model.dim=8,16,32", "model.depth=1,2", "model.dropout=0,0.1", "train.lr=1e-3,3e-3"])
    # typed by the schema: dropout 0 is the float 0.0, 1e-3 (text to YAML 1.1) is the float 0.001
    assert sweep.grid == {"model.dim": [8, 16, 32], "model.depth": [1, 2], "model.dropout": [0.0, 0.1],
                          "train.lr": [0.001, 0.003]}
    points = sweep.points()
    expected = [dict(zip(sweep.grid, values)) for values in itertools.product([8, 16, 32], [1, 2], [0.0, 0.1], [0.001, 0.003])]
    assert points == expected and len(points) == sweep.trials == 24
    assert all(isinstance(p["model.dropout"], float) and isinstance(p["model.dim"], int) for p in points)
    assert sweep.sampler == "grid" and sweep.pruner == "none"
    assert (sweep.objective, sweep.direction) == ("val_loss", "min")  # the config's train.monitor / train.mode


def test_a_one_value_axis_fixes_its_key_like_an_override(sweep_config):
    sweep = sweep_of(sweep_config, ["model.dim=8,16", "train.max_epochs=1"])
    assert sweep.grid == {"model.dim": [8, 16]}
    assert sweep.config["train"]["max_epochs"] == 1


def test_grid_values_split_on_top_level_commas():
    assert split_top_level("1,[2,3],{a: 4, b: 5},6") == ["1", "[2,3]", "{a: 4, b: 5}", "6"]
    assert grid_axes(["model.dim=64,128"]) == {"model.dim": [64, 128]}


@pytest.mark.parametrize("entries, message", [
    (["model.dim=8,-1"], "--grid model.dim=-1: model.dim: Input should be greater than 0 (got -1)"),
    (["model.dimm=8,16"], "--grid model.dimm=8: unknown config key 'model.dimm'; did you mean 'model.dim'?"),
    (["model.depth=1,x"], "--grid model.depth=x: model.depth: Input should be a valid integer"),
    (["model.dim=8,8"], "--grid model.dim lists the value 8 twice"),
    (["model.dim"], "--grid entry 'model.dim' must look like KEY=V1,V2,..."),
])
def test_a_bad_grid_value_names_its_key_and_value(sweep_config, entries, message):
    with pytest.raises(KilnError) as err:
        sweep_of(sweep_config, entries)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_grid_point_is_validated_whole(sweep_config):
    # each value is valid on its own (against grid_size 16); the point grid_size 8 with min_grid_size 10 is not
    with pytest.raises(KilnError, match=r"^--grid point data.generate.grid_size=8, data.generate.min_grid_size=10: "
                                        r"data.generate: Value error, min_grid_size 10 is larger than grid_size 8"):
        define(str(sweep_config), ["data.generate.grid_size=16"], grid=["data.generate.grid_size=8,16",
               "data.generate.min_grid_size=6,10"], space=None, trials=None, objective=None, direction=None,
               sampler=None, pruner=None, retries=None)


@pytest.mark.parametrize("space, message", [
    ({"train.lr": {"log_uniform": [0, 1]}}, "space entry train.lr: log_uniform needs low > 0 (got 0)"),
    # a float range over an int key: caught at an inner value, not when a trial draws 2.11
    ({"model.depth": {"uniform": [1, 4]}}, "space entry model.depth=2.11: model.depth: Input should be a valid integer"),
    ({"model.depth": {"normal": [1, 4]}}, "space entry model.depth: {'normal': [1, 4]} must be one of"),
    ({"model.dim": {"choice": [8, -4]}}, "space entry model.dim=-4: model.dim: Input should be greater than 0"),
    ({"model.dim": {"int": [8, 4]}}, "space entry model.dim: int must be [low, high] with low < high"),
    ({"train.lr": {"log_uniform": [1e-4, 1e-2], "step": 1e-4}}, "space entry train.lr: log_uniform takes no step"),
    ({"model.dimm": {"int": [8, 16]}}, "space entry model.dimm=8: unknown config key 'model.dimm'"),
])
def test_a_bad_space_entry_names_its_key(sweep_config, space, message):
    with pytest.raises(KilnError) as err:
        make_sweep(str(sweep_config), [], space=space, trials=3, log=lambda line: None)
    assert str(err.value).startswith(message)


def test_values_that_conflict_at_a_corner_of_the_space_are_an_error_before_any_trial(sweep_config):
    # each value is valid alone, the lows together and the highs together too; grid_size 6 with min_grid_size 8 is not
    space = {"data.generate.grid_size": {"int": [6, 10]}, "data.generate.min_grid_size": {"int": [4, 8]}}
    with pytest.raises(KilnError, match=r"^the space's corner data.generate.grid_size=6, data.generate.min_grid_size=8: "
                                        r"data.generate: Value error, min_grid_size 8 is larger than grid_size 6"):
        make_sweep(str(sweep_config), [], space=space, trials=3, log=lambda line: None)


def test_a_space_samples_inside_its_bounds(sweep_config):
    from kiln.sweep.study import optuna

    space = {"train.lr": {"log_uniform": [1e-4, 1e-2]}, "model.dim": {"choice": [8, 16]}, "model.depth": {"int": [1, 3]},
             "model.dropout": {"uniform": [0.0, 0.3], "step": 0.1}}
    sweep = make_sweep(str(sweep_config), [], space=space, trials=5, log=lambda line: None)
    assert sweep.points() == [{}] * 5 and (sweep.sampler, sweep.pruner) == ("tpe", "median")
    study = optuna().create_study(sampler=optuna().samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = sweep.suggest(study.ask())
        assert 1e-4 <= params["train.lr"] <= 1e-2 and params["model.dim"] in (8, 16) and params["model.depth"] in (1, 2, 3)
        assert min(abs(params["model.dropout"] - v) for v in (0.0, 0.1, 0.2, 0.3)) < 1e-9


def test_a_test_objective_needs_a_direction_and_warns_that_it_leaks(sweep_config):
    with pytest.raises(KilnError, match="--objective test_rollout_success: say whether lower or higher is better"):
        sweep_of(sweep_config, ["model.dim=8,16"], objective="test_rollout_success")
    lines = []
    sweep = sweep_of(sweep_config, ["model.dim=8,16"], objective="test_rollout_success", direction="max", log=lines.append)
    assert (sweep.objective, sweep.direction) == ("test_rollout_success", "max")
    assert "selects on the test split" in lines[0]


def test_a_sweep_file_holds_config_overrides_and_grid(sweep_config, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(f"config: {sweep_config}\noverrides: [train.max_epochs=1]\n"
                    "grid: {model.dim: [8, 16], model.depth: [1, 2], model.dropout: [0.0]}\n")
    sweep = sweep_of(path)
    assert sweep.grid == {"model.dim": [8, 16], "model.depth": [1, 2]} and sweep.trials == 4
    assert sweep.config["train"]["max_epochs"] == 1 and sweep.config["model"]["dropout"] == 0.0
    (tmp_path / "typo.yaml").write_text(f"config: {sweep_config}\ngrids: {{model.dim: [8, 16]}}\n")
    with pytest.raises(KilnError, match=r"sweep file '.*typo.yaml': grids: Extra inputs are not permitted"):
        sweep_of(tmp_path / "typo.yaml")


def test_the_fingerprint_tells_sweeps_apart(sweep_config):
    a = sweep_of(sweep_config, ["model.dim=8,16"])
    assert a.fingerprint() == sweep_of(sweep_config, ["model.dim=8,16"], retries=2).fingerprint()
    assert a.fingerprint() != sweep_of(sweep_config, ["model.dim=8,32"]).fingerprint()


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_sweep_file_is_valid_at_every_corner(path, monkeypatch):
    """The files under sweeps/: config, overrides, grid points or the space's corners all pass the schema."""
    monkeypatch.chdir(ROOT)
    sweep = sweep_of(path)
    assert sweep.trials >= 9
