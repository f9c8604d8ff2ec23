"""traffic: a user's dataset directory for `kiln train` (traffic.parquet with per-node or per-segment records,
edges.csv, nodes.csv) and T-GCN's Los-loop folder for `kiln data traffic --los-loop` (los_speed.csv, los_adj.csv,
graph_sensor_locations.csv). Each example is a valid tiny dataset or folder with one file made hostile: random bytes,
a truncation or byte flips of the valid file, or a valid file with one thing made hostile (a cell set to nan, inf,
-1, 1e12, text or nothing; a row cut short or made long; a column dropped, renamed or of the wrong type).

The contract: the dataset loads, with every speed a finite number from 0 to the unit's MAX_SPEED, finite weather,
strictly increasing timestamps and a graph of finite, non-negative weights between its nodes; or it is refused with
one KilnError line that names a file of the dataset. convert_los_loop either writes a dataset that loads, or
refuses that way and leaves nothing at --out."""

from __future__ import annotations

import datetime
import decimal
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.recipes.traffic.config import CityGenerator, TrafficConfig
from kiln.recipes.traffic.data import MAX_SPEED, convert_los_loop, load_data, load_series, simulate_dataset

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

quiet = lambda message: None  # noqa: E731


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Durable writes are the engine's tests' subject; here an fsync per file would be most of an example's time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Three days of hourly records of the simulated city (62 nodes): per node with edges.csv (given a weight
    column), and per road segment (the graph in the records)."""
    root = tmp_path_factory.mktemp("templates")
    made = {}
    for shape in ("nodes", "segments"):
        made[shape] = root / shape
        simulate_dataset(made[shape], CityGenerator(days=3, interval_minutes=60, seed=2, per_segment=shape == "segments"), quiet)
    edges = pd.read_csv(made["nodes"] / "edges.csv")
    edges.assign(weight=(1 / edges["length_km"]).round(3)).to_csv(made["nodes"] / "edges.csv", index=False)
    return made


# ----------------------------------------------------------------------------- hostile contents, per kind of file

hostile_text = st.one_of(st.sampled_from(["", "nan", "inf", "-inf", "-1", "1e12", "1e39", "-1e400", "x", "0x10", '"', "1,2",
                                          "True", "1_000", '"a\nb"', "1" * 400]),
                         st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(repr))
hostile_numbers = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, -1e-9, 0.0, 300.0, 300.0001, 186.5, 1e12, 1e39,
                                             1e308, 5e-324, None]),
                            st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def hostile_csv(draw, text: str) -> bytes:
    """The valid CSV `text` (a header row and rows) with one thing changed."""
    rows = [line.split(",") for line in text.splitlines()]
    rows = rows[:draw(st.integers(1, min(len(rows), 8)))] + rows[8:]  # some of the first rows go missing
    width = len(rows[0])
    change = draw(st.sampled_from(["cell", "cell", "short row", "long row", "no header", "header cell", "blank line",
                                   "drop column", "header only", "quoted newline"]))
    row = draw(st.integers(0, len(rows) - 1))
    if change == "cell" and len(rows) > 1:
        rows[max(row, 1)][draw(st.integers(0, width - 1))] = draw(hostile_text)
    elif change == "short row":
        rows[row].pop()
    elif change == "long row":
        rows[row].append(draw(hostile_text))
    elif change == "no header":
        rows = rows[1:]
    elif change == "header cell":
        rows[0][draw(st.integers(0, width - 1))] = draw(hostile_text)
    elif change == "blank line":
        rows.insert(draw(st.integers(1, len(rows))), [])
    elif change == "drop column":
        column = draw(st.integers(0, width - 1))
        rows = [[v for j, v in enumerate(r) if j != column] for r in rows]
    elif change == "header only":
        rows = rows[:1]
    else:
        rows[row][draw(st.integers(0, len(rows[row]) - 1))] = '"1\n2"'
    return "".join(",".join(r) + "\n" for r in rows).encode()


def wrong_type(draw, n: int):
    """A column of n values of another type than a reading, id or time."""
    kind = draw(st.sampled_from(["str", "bool", "list", "struct", "bytes", "category", "decimal", "date", "timedelta",
                                 "datetime", "null", "Int64 with NA", "uint64", "int8", "object mix"]))
    if kind == "str":
        return np.array([str(i) for i in range(n)], dtype=object)
    if kind == "bool":
        return np.arange(n) % 2 == 0
    if kind == "list":
        return pd.Series([[i, 1] for i in range(n)])
    if kind == "struct":
        return pd.Series([{"a": i} for i in range(n)])
    if kind == "bytes":
        return pd.Series([b"\xff%d" % i for i in range(n)])
    if kind == "category":
        return pd.Categorical([f"c{i % 3}" for i in range(n)])
    if kind == "decimal":
        return pd.Series([decimal.Decimal(i % 50) for i in range(n)])
    if kind == "date":
        return pd.Series([datetime.date(2025, 1, 1 + i % 28) for i in range(n)])
    if kind == "timedelta":
        return pd.to_timedelta(np.arange(n), unit="min")
    if kind == "datetime":
        return pd.date_range("2025-01-01", periods=n, freq="min")
    if kind == "null":
        return pd.Series([None] * n, dtype=object)
    if kind == "Int64 with NA":
        values = pd.array(np.arange(n) % 60, dtype="Int64")
        values[draw(st.integers(0, n - 1))] = pd.NA
        return values
    if kind == "uint64":
        return (np.arange(n) % 60).astype(np.uint64) + np.uint64(draw(st.sampled_from([0, 2**63])))
    if kind == "int8":
        return (np.arange(n) % 60).astype(np.int8)
    return pd.Series([f"x{i}" if i % 2 else float(i) for i in range(n)], dtype=object).astype(str)  # a text column of numbers


def hostile_records(draw, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    n = len(frame)
    change = draw(st.sampled_from(["cell", "cell", "cell", "column type", "drop column", "rename", "rows", "duplicate row",
                                   "shuffle", "per-segment column"]))
    column = draw(st.sampled_from(list(frame.columns)))
    note(f"records: {change} in {column}")
    if change == "cell":
        row = draw(st.integers(0, n - 1))
        if column == "timestamp":
            value = draw(st.sampled_from([pd.NaT, frame["timestamp"].iloc[0], pd.Timestamp("1677-09-22"),
                                          frame["timestamp"].iloc[row] + pd.Timedelta(minutes=7)]))
            frame.loc[row, "timestamp"] = value
        elif column in ("node_id", "node_a_id", "node_b_id", "run_id"):
            frame[column] = frame[column].astype(object)
            frame.loc[row, column] = draw(st.sampled_from([None, -1, 999, 2**62, frame[column].iloc[(row + 1) % n]]))
            if frame[column].isna().any():
                frame[column] = frame[column].astype("float64")
            else:
                frame[column] = frame[column].astype("int64")
        else:
            frame[column] = frame[column].astype("float64")
            frame.loc[row, column] = draw(hostile_numbers)
    elif change == "column type":
        frame[column] = wrong_type(draw, n)
    elif change == "drop column":
        frame = frame.drop(columns=[column])
    elif change == "rename":
        frame = frame.rename(columns={column: draw(st.sampled_from(["speed_kmh", "speed_mph", "node_id", "node_a_id", "x", ""]))})
        if frame.columns.duplicated().any():
            frame = frame.loc[:, ~frame.columns.duplicated()]
    elif change == "rows":
        frame = frame.iloc[:draw(st.integers(0, 3 * 62 + 1))]
    elif change == "duplicate row":
        frame = pd.concat([frame, frame.iloc[[draw(st.integers(0, n - 1))]]])
    elif change == "shuffle":
        frame = frame.sample(frac=1.0, random_state=draw(st.integers(0, 9)))
    else:
        frame[draw(st.sampled_from(["node_a_id", "node_b_id"]))] = frame[draw(st.sampled_from(list(frame.columns)))]
    return frame


def damage(draw, root: Path, targets: list[str], hostile) -> str:
    """Make one file of the folder at `root` hostile; returns what was done."""
    target = draw(st.sampled_from(targets))
    path = root / target
    raw = bytearray(path.read_bytes())
    kind = draw(st.sampled_from(["random", "truncate", "flip", "hostile", "hostile", "hostile", "delete", "none"]))
    if kind == "delete":
        path.unlink()
        return f"{target}: deleted"
    if kind in BYTE_DAMAGE:
        raw = bytearray(damage_bytes(draw, bytes(raw), kind))
    elif kind == "hostile":
        raw = bytearray(hostile(draw, path))
    path.write_bytes(bytes(raw))
    return f"{target}: {kind}"


def hostile_dataset_file(draw, path: Path) -> bytes:
    if path.suffix == ".csv":
        return draw(hostile_csv(path.read_text()))
    frame = hostile_records(draw, pd.read_parquet(path))
    frame.to_parquet(path, index=False)
    return path.read_bytes()


# ----------------------------------------------------------------------------- the contract

def loads_or_refuses(data_dir: Path):
    """A series of plausible speeds on a sound graph, or one line naming a file of the dataset."""
    try:
        series = load_series(data_dir, quiet)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        assert str(data_dir) in str(err), str(err)
        return None
    steps, nodes = series.speed.shape
    assert series.speed.dtype == np.float32 and len(series.times) == steps and len(series.node_ids) == nodes
    assert np.isfinite(series.speed).all() and (series.speed >= 0).all() and (series.speed <= MAX_SPEED[series.unit]).all()
    assert not series.times.hasnans and series.times.is_monotonic_increasing and series.times.is_unique
    assert series.weather is None or (series.weather.shape == (steps, 3) and np.isfinite(series.weather).all())
    assert series.edges.shape == (2, len(series.edge_weight)) and ((series.edges >= 0) & (series.edges < nodes)).all()
    assert np.isfinite(series.edge_weight).all() and (series.edge_weight >= 0).all()
    assert not pd.isna(series.node_ids).any()
    return series


TARGETS = {"nodes": ["traffic.parquet", "traffic.parquet", "edges.csv", "nodes.csv"], "segments": ["traffic.parquet"]}


@settings(max_examples=150)
@given(st.data())
def test_a_dataset_with_one_hostile_file(tmp_path_factory, templates, data):
    shape = data.draw(st.sampled_from(["nodes", "nodes", "segments"]))
    data_dir = tmp_path_factory.mktemp("fuzz") / "city"
    shutil.copytree(templates[shape], data_dir)
    note(f"{shape}: {damage(data.draw, data_dir, TARGETS[shape], hostile_dataset_file)}")
    loads_or_refuses(data_dir)


def test_the_untouched_datasets_load(templates):
    per_node, per_segment = loads_or_refuses(templates["nodes"]), loads_or_refuses(templates["segments"])
    assert per_node.speed.shape == (72, 62) and per_node.weather is not None and per_segment.speed.shape == (72, 62)


@settings(max_examples=30)
@given(st.data())
def test_load_data_gives_finite_windows_or_one_line(tmp_path_factory, templates, data):
    data_dir = tmp_path_factory.mktemp("windows") / "city"
    shutil.copytree(templates["nodes"], data_dir)
    note(damage(data.draw, data_dir, ["traffic.parquet", "edges.csv"], hostile_dataset_file))
    cfg = TrafficConfig.model_validate({"data": {"dir": str(data_dir), "generate": None}, "model": {"seq_len": 4, "pred_len": 2}})
    try:
        splits = load_data(cfg, quiet)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        return
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        assert len(split["x"]) and bool(split["x"].isfinite().all()) and bool(split["weather"].isfinite().all())
    assert all(np.isfinite(splits.info[k]).all() for k in ("speed_mean", "speed_std", "weather_mean", "weather_std"))


# ----------------------------------------------------------------------------- Los-loop

def write_los_loop(src: Path) -> Path:
    """Three detectors, 40 five-minute steps, a connected adjacency, and the detectors' locations."""
    src.mkdir(parents=True)
    (src / "los_speed.csv").write_text("717,718,719\n" + "".join(f"{60 + i % 3},61.5,{62 - i / 10:g}\n" for i in range(40)))
    (src / "los_adj.csv").write_text("1,0.5,0\n0.5,1,1\n0,1,1\n")
    (src / "graph_sensor_locations.csv").write_text("index,sensor_id,latitude,longitude\n0,717,34.1,-118.3\n1,718,34.2,-118.2\n"
                                                    "2,719,34.0,-118.1\n")
    return src


LOS_TARGETS = ["los_speed.csv", "los_speed.csv", "los_adj.csv", "los_adj.csv", "graph_sensor_locations.csv"]


def hostile_los_file(draw, path: Path) -> bytes:
    return draw(hostile_csv(path.read_text()))


def converts_or_refuses(src: Path, out: Path):
    try:
        info = convert_los_loop(src, out, log=quiet)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        assert str(src) in str(err), str(err)
        assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["src"]
        return None
    series = loads_or_refuses(out)
    assert series is not None, "a converted Los-loop folder must load"
    assert series.unit == "mph" and series.speed.shape == (info["num_steps"], info["num_nodes"])
    return series


@settings(max_examples=200)
@given(st.data())
def test_a_los_loop_folder_with_one_hostile_file(tmp_path_factory, data):
    work = tmp_path_factory.mktemp("los")
    src = write_los_loop(work / "src")
    note(damage(data.draw, src, LOS_TARGETS, hostile_los_file))
    converts_or_refuses(src, work / "out")


def test_the_untouched_los_loop_folder_converts(tmp_path):
    series = converts_or_refuses(write_los_loop(tmp_path / "src"), tmp_path / "out")
    assert series.speed.shape == (40, 3) and series.edges.shape == (2, 4) and series.speed[0].tolist() == [60, 61.5, 62]
