"""seqgen: a user's directory of sequence CSVs for `kiln train` (one file per sequence: 151 rows of step, pc1..pc5,
param1, param2). Each example is a valid tiny dataset (8 synthetic sequences) with one file made hostile: random
bytes, a truncation or byte flips of the valid file, a valid file with one thing made hostile (a cell set to nan,
inf, 1e39, text or nothing; a row cut short or made long; a row or column dropped; a header cell changed; a
parameter that changes), or the file deleted.

The contract: read_sequences returns finite components [N, 151, 5] and parameters [N, 2] that survive float32, or
refuses with one KilnError line naming the file (on_bad_file=error) or the directory; with on_bad_file=skip a bad
file is left out and named in a one-line warning. load_data either gives finite z-scored splits and statistics or
refuses in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.recipes.seqgen.config import SeqgenConfig, SyntheticStrings
from kiln.recipes.seqgen.data import STEPS, generate_dataset, load_data, read_sequence, read_sequences

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

COUNT = 8
TARGET = "seq_00003.csv"


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Durable writes are the engine's tests' subject; here an fsync per file would be most of an example's time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("template") / "strings"
    generate_dataset(out, SyntheticStrings(num_sequences=COUNT, profile_points=8, seed=1, train_size=4, val_size=2, split_seed=0),
                     lambda message: None)
    return out


# ----------------------------------------------------------------------------- hostile contents

hostile_cells = st.one_of(st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e39", "-1e39", "1e308", "1e400", "x", "0x10", '"',
                                           "1,2", "True", "1_000", '"a\nb"', "1" * 400, " ", "NA", "null"]),
                          st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def hostile_csv(draw, text: str) -> bytes:
    """The valid CSV `text` (a header row and 151 rows) with one thing changed."""
    rows = [line.split(",") for line in text.splitlines()]
    width = len(rows[0])
    change = draw(st.sampled_from(["cell", "cell", "cell", "short row", "long row", "no header", "header cell", "blank line",
                                   "drop column", "drop row", "extra row", "parameter", "quoted newline", "header only"]))
    row, column = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, width - 1))
    if change == "cell":
        rows[max(row, 1)][column] = draw(hostile_cells)
    elif change == "short row":
        rows[row] = rows[row][:draw(st.integers(0, width - 1))]
    elif change == "long row":
        rows[row].append(draw(hostile_cells))
    elif change == "no header":
        rows = rows[1:]
    elif change == "header cell":
        rows[0][column] = draw(hostile_cells)
    elif change == "blank line":
        rows.insert(draw(st.integers(1, len(rows))), [])
    elif change == "drop column":
        rows = [[v for j, v in enumerate(r) if j != column] for r in rows]
    elif change == "drop row":
        del rows[max(row, 1)]
    elif change == "extra row":
        rows.insert(max(row, 1), list(rows[max(row, 1)]))
    elif change == "parameter":
        rows[max(row, 1)][draw(st.sampled_from([width - 2, width - 1]))] = draw(st.sampled_from(["0.5", "1e-7", "-3", "1e39"]))
    elif change == "quoted newline":
        rows[row][column] = '"1\n2"'
    else:
        rows = rows[:1]
    return "".join(",".join(r) + "\n" for r in rows).encode()


def damage(draw, root: Path) -> str:
    """Make one sequence file of the dataset at `root` hostile (or add a stray .csv); returns what was done."""
    path = root / TARGET
    raw = bytearray(path.read_bytes())
    kind = draw(st.sampled_from(["random", "truncate", "flip", "hostile", "hostile", "hostile", "hostile", "stray", "delete",
                                 "none"]))
    if kind == "delete":
        path.unlink()
        return kind
    if kind == "stray":
        path = root / "notes.csv"  # a file that is no sequence beside them
    if kind in (*BYTE_DAMAGE, "stray"):
        raw = bytearray(damage_bytes(draw, bytes(raw), "random" if kind == "stray" else kind))
    elif kind == "hostile":
        raw = bytearray(draw(hostile_csv(raw.decode())))
    path.write_bytes(bytes(raw))
    return kind


# ----------------------------------------------------------------------------- the contract

def finite_in_float32(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all() and np.isfinite(values.astype(np.float32)).all())


def reads_or_refuses(data_dir: Path, on_bad_file: str):
    lines = []
    try:
        names, params, components = read_sequences(data_dir, on_bad_file, lines.append)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        assert str(data_dir) in str(err), str(err)
        return None
    assert all(one_line(Exception(line)) for line in lines), lines
    assert components.shape == (len(names), STEPS, 5) and params.shape == (len(names), 2)
    assert finite_in_float32(components) and finite_in_float32(params)
    files = sorted(p.name for p in data_dir.glob("*.csv"))
    for name in files:  # each file is read (a sequence) or refused (skip: named in a warning; error: the whole read)
        try:
            read_sequence(data_dir / name)
            assert name in names, name
        except Exception:  # noqa: BLE001 - whichever way the file fails, it must not be among the sequences
            assert on_bad_file == "skip" and name not in names and any(name in line for line in lines), (name, lines)
    return names


@settings(max_examples=200)
@given(st.data())
def test_a_dataset_with_one_hostile_file(tmp_path_factory, template, data):
    data_dir = tmp_path_factory.mktemp("fuzz") / "strings"
    shutil.copytree(template, data_dir)
    note(damage(data.draw, data_dir))
    mode = data.draw(st.sampled_from(["error", "skip"]))
    reads_or_refuses(data_dir, mode)


def test_the_untouched_dataset_reads(template):
    assert reads_or_refuses(template, "error") == [f"seq_{k:05d}.csv" for k in range(COUNT)]


@settings(max_examples=40)
@given(st.data())
def test_load_data_gives_finite_splits_or_one_line(tmp_path_factory, template, data):
    data_dir = tmp_path_factory.mktemp("splits") / "strings"
    shutil.copytree(template, data_dir)
    note(damage(data.draw, data_dir))
    cfg = SeqgenConfig.model_validate({"data": {"dir": str(data_dir), "generate": None, "on_bad_file": data.draw(st.sampled_from(["error", "skip"])),
                                                "split": {"train_size": 4, "val_size": 2, "split_seed": 0}}})
    try:
        splits = load_data(cfg, lambda message: None)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        return
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        assert len(split["y"]) and bool(split["y"].isfinite().all()) and bool(split["params"].isfinite().all())
    assert all(np.isfinite(splits.info[k]).all() for k in ("y_mean", "y_std", "param_mean", "param_std"))
