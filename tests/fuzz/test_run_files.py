"""The files kiln reads back from a dataset or a run directory: dataset.json, checkpoints and weight files,
status.json. Random bytes, random JSON, and truncations / byte flips of real files."""

from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.checkpoint import load_checkpoint
from kiln.engine.files import save_atomic
from kiln.engine.monitor import read_status
from kiln.errors import KilnError
from kiln.recipes import dataset_info

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
files = st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode()))


def refuses_in_one_line(read, *args):
    try:
        return read(*args)
    except KilnError as err:
        assert one_line(err), repr(str(err))


@settings(max_examples=200)
@given(files)
def test_dataset_json(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("data")
    (directory / "dataset.json").write_bytes(data)
    info = refuses_in_one_line(dataset_info, directory, "nav", "kiln data nav --out DIR")
    assert info is None or isinstance(info, dict)


@settings(max_examples=200)
@given(files)
def test_status_json(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("run")
    (directory / "status.json").write_bytes(data)
    status = refuses_in_one_line(read_status, directory)
    assert status is None or isinstance(status, dict)


REAL = {"kiln_format": 1, "kind": "weights", "recipe": "nav", "config": {"recipe": "nav", "train": {"lr": 1e-3}},
        "state_dict": {"model.w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "model.b": torch.zeros(8)}, "epoch": 3}


@settings(max_examples=200)
@given(st.data())
def test_checkpoints_truncated_flipped_or_foreign(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    save_atomic(REAL, path)
    kind = data.draw(st.sampled_from([*BYTE_DAMAGE, "foreign"]))
    if kind == "foreign":
        torch.save(data.draw(json_values), path)
    else:
        path.write_bytes(damage_bytes(data.draw, path.read_bytes(), kind, max_random=500, max_flips=8))
    obj = refuses_in_one_line(load_checkpoint, path, "nav")
    assert obj is None or obj.get("kiln_format") == 1
