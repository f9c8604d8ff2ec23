"""Config files and KEY=VALUE overrides: random text, random structures, and random mutations of shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.recipes import load_recipe_config

from .conftest import one_line

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
KEYS = ["recipe", "name", "data", "model", "train", "phases", "train.lr", "train.batch_size", "train.max_epochs", "train.monitor",
        "train.scheduler", "train.precision", "train.param_groups", "model.arch", "model.dim", "data.dir", "data.generate",
        "train.compile", "train.patience", "phases.0", "model.depth", "train.loggers"]


def loads_or_refuses(path: Path, overrides: list[str] = ()) -> None:
    try:
        load_recipe_config(path, list(overrides))
    except KilnError as err:
        assert one_line(err), repr(str(err))


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_as_a_config_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    loads_or_refuses(path)


def set_path(config: dict, key: str, value) -> dict:
    node = config
    *parents, last = key.split(".")
    for part in parents:
        if isinstance(node, list):
            node = node[0] if node else {}
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, dict):
        node[last] = value
    return config


@settings(max_examples=300)
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3),
       st.sampled_from([".yaml", ".json"]))
def test_mutated_shipped_configs(tmp_path_factory, source, mutations, suffix):
    config = yaml.safe_load(source.read_text())
    for key, value in mutations:
        config = set_path(config, key, value)
    path = tmp_path_factory.mktemp("cfg") / f"{source.stem}{suffix}"
    try:
        path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    except (TypeError, ValueError):  # a value neither format can hold
        return
    loads_or_refuses(path)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20))),
                min_size=1, max_size=3))
def test_random_overrides(overrides):
    loads_or_refuses(REPO / "configs" / "nav" / "quick.yaml", overrides)


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_kiln_train_on_a_malformed_config_exits_2_with_one_line_and_writes_nothing(tmp_path_factory, capsys, data):
    from kiln.cli import main

    work = tmp_path_factory.mktemp("train")
    (work / "c.yaml").write_bytes(data)
    capsys.readouterr()
    assert main(["train", str(work / "c.yaml"), "--run-dir", str(work / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and len(err.strip().splitlines()) == 1
    assert not (work / "run").exists()
