"""Traffic datasets: the Los-loop converter and loader on the real data, the T-GCN protocol, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kiln.errors import KilnError
from kiln.recipes.traffic.data import (MAX_SPEED, build_splits, convert_los_loop, gather, load_series, make_split,
                                       normalisation, split_bounds, split_starts, window_starts, write_dataset)
from kiln.recipes.traffic.evaluation import tgcn_table
from kiln.recipes.traffic.sim import simulate_city
from kiln.recipes.traffic.task import strongest_edges

ROOT = Path(__file__).resolve().parents[3]
LOS_LOOP = ROOT.parent / "shared" / "data" / "los-loop"
quiet = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def los_loop(tmp_path_factory) -> Path:
    if not (LOS_LOOP / "los_speed.csv").is_file():
        pytest.skip("../shared/data/los-loop is not present")
    out = tmp_path_factory.mktemp("los") / "los-loop"
    convert_los_loop(LOS_LOOP, out)
    return out


def small_city(tmp_path: Path, days: int = 4) -> Path:
    records, nodes, edges = simulate_city(days=days, seed=1)
    out = tmp_path / "city"
    write_dataset(out, records, nodes, edges, {"source": "test"})
    return out


# ---------------------------------------------------------------- Los-loop on the real data

def test_los_loop_converts_and_loads(los_loop):
    raw = pd.read_csv(LOS_LOOP / "los_speed.csv").to_numpy(np.float32)
    adjacency = pd.read_csv(LOS_LOOP / "los_adj.csv", header=None).to_numpy()
    lines = []
    series = load_series(los_loop, lines.append)
    assert series.speed.shape == (2016, 207) and series.unit == "mph" and series.weather is None
    np.testing.assert_array_equal(series.speed, raw)
    assert series.interval_minutes == 5
    assert series.times[0].day_name() == "Thursday" and series.times[-1].day_name() == "Wednesday"
    off_diagonal = (adjacency != 0) & ~np.eye(207, dtype=bool)
    assert series.edges.shape == (2, off_diagonal.sum())
    np.testing.assert_allclose(series.edge_weight, adjacency[series.edges[0], series.edges[1]], rtol=1e-6)
    nodes = pd.read_csv(los_loop / "nodes.csv")
    assert nodes["lat"].between(33.5, 34.5).all() and nodes["lon"].between(-119, -117.5).all()
    assert "Number of nodes: 207" in lines and f"Number of edges: {off_diagonal.sum()}" in lines
    assert any(line.startswith("  Speed: mean=") for line in lines)


def test_tgcn_protocol_matches_published_persistence(los_loop):
    """Persistence under kiln's T-GCN protocol reproduces the figures recomputed from T-GCN's code."""
    series = load_series(los_loop, quiet)
    arrays, info = build_splits(series, "tgcn", 12, 12, 0.15, 0.15, quiet)
    assert info["bounds"]["test"] == (1612, 2016)
    assert len(arrays["test"]["x"]) == 2016 - 1612 - 12 - 3  # range(len - seq - pre) for the 15-minute block
    x = torch.from_numpy(arrays["test"]["x"]) * info["speed_std"] + info["speed_mean"]
    last = x[:, :, -1:].expand(-1, -1, 12)
    table = tgcn_table(last, torch.from_numpy(arrays["test"]["y"]), info)
    assert table["15min"]["rmse"] == pytest.approx(5.5428, abs=1e-3)
    assert table["15min"]["mae"] == pytest.approx(3.1561, abs=1e-3)
    assert table["60min"]["rmse"] == pytest.approx(8.4555, abs=1e-3)
    assert table["60min"]["mae"] == pytest.approx(4.4332, abs=1e-3)


def test_normalisation_uses_training_split_only(los_loop):
    series = load_series(los_loop, quiet)
    _, info = build_splits(series, "tgcn", 12, 12, 0.15, 0.15, quiet)
    train_end = info["bounds"]["train"][1]
    assert info["speed_mean"] == pytest.approx(series.speed[:train_end].mean(), rel=1e-5)
    assert info["speed_mean"] != pytest.approx(series.speed.mean(), rel=1e-4)


def test_adjacency_size_mismatch_is_one_line_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pd.DataFrame(np.ones((30, 4)), columns=["a", "b", "c", "d"]).to_csv(src / "los_speed.csv", index=False)
    pd.DataFrame(np.eye(3)).to_csv(src / "los_adj.csv", header=False, index=False)
    with pytest.raises(KilnError, match="3x3 but .* has 4 detectors; the adjacency must be 4x4"):
        convert_los_loop(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- windows and splits

def test_windows_are_chronological_and_skip_gaps():
    times = pd.DatetimeIndex(pd.date_range("2025-01-01", periods=10, freq="15min").delete(5))  # a gap after step 4
    starts = window_starts(times, 0, 9, 3, 15)
    assert starts.tolist() == [0, 1, 2, 5, 6]  # no window spans the missing 15 minutes
    values = np.arange(12, dtype=np.float32)[:, None]
    windows = gather(values, np.array([0, 9]), 4)
    assert windows[0, :, 0].tolist() == [0, 1, 2, 3] and np.isnan(windows[1, 3:, 0]).all()


def test_chronological_splits_do_not_overlap(tmp_path):
    series = load_series(small_city(tmp_path, days=5), quiet)
    arrays, info = build_splits(series, "chronological", 12, 12, 0.15, 0.15, quiet)
    bounds = split_bounds(len(series.times), "chronological", 0.15, 0.15)
    starts = split_starts(series, bounds, "chronological", 12, 12)
    assert bounds["train"][1] == bounds["val"][0] and bounds["val"][1] == bounds["test"][0]
    last_train_target = starts["train"].max() + 24
    assert last_train_target <= bounds["val"][0] <= starts["val"].min()
    assert starts["test"].min() >= bounds["test"][0]
    assert arrays["train"]["weather"].shape[1:] == (24, 3) and np.isfinite(arrays["test"]["y"]).all()
    # x is the normalised history, y the raw future of the same series
    s = starts["val"][3]
    np.testing.assert_allclose(arrays["val"]["y"][3], series.speed[s + 12:s + 24].T, rtol=1e-6)
    np.testing.assert_allclose(arrays["val"]["x"][3] * info["speed_std"] + info["speed_mean"], series.speed[s:s + 12].T, rtol=1e-4)


def test_strongest_edges_keeps_the_k_heaviest_incoming():
    rng = np.random.default_rng(0)
    edges = torch.from_numpy(rng.integers(0, 8, (2, 60)))
    weight = torch.from_numpy(rng.random(60).astype(np.float32))
    kept, kept_weight = strongest_edges(edges, weight, 8, 3)
    for node in range(8):
        incoming = sorted(weight[edges[1] == node].tolist(), reverse=True)[:3]
        assert sorted(kept_weight[kept[1] == node].tolist(), reverse=True) == incoming


# ---------------------------------------------------------------- per-segment records (the original guide's shape)

def test_per_segment_records_build_the_graph_and_node_speeds(tmp_path):
    from kiln.recipes.traffic.sim import segment_records

    records, nodes, edges = simulate_city(days=1, seed=3)
    segments = segment_records(records, edges, seed=3)
    assert list(segments.columns[:5]) == ["run_id", "timestamp", "node_a_id", "node_b_id", "speed_kmh"]
    assert len(segments) == 96 * 144 and segments["run_id"].nunique() == 96  # one run per timestamp, as the guide's
    out = tmp_path / "segments"
    write_dataset(out, segments, nodes, None, {})
    lines = []
    series = load_series(out, lines.append)
    assert "Number of nodes: 62" in lines and "Number of edges: 144" in lines and not (out / "edges.csv").exists()
    got = {(series.node_ids[a], series.node_ids[b]) for a, b in series.edges.T}
    assert got == set(zip(edges["source"], edges["target"]))
    # each node's series: the mean of its outgoing segments (every city node has one), by pandas directly
    expected = segments.groupby(["timestamp", "node_a_id"])["speed_kmh"].mean().unstack().to_numpy()
    np.testing.assert_allclose(series.speed, expected, rtol=1e-6)
    # the simulated segment is its two ends' average plus noise, so node speeds track the per-node simulation
    assert np.corrcoef(series.speed.ravel(), records["speed_kmh"].to_numpy())[0, 1] > 0.9


def test_a_node_without_outgoing_segments_takes_its_incoming_ones(tmp_path):
    times = np.repeat(pd.date_range("2025-01-06", periods=4, freq="15min").to_numpy(), 3)
    frame = pd.DataFrame({"run_id": np.repeat(np.arange(4), 3), "timestamp": times,
                          "node_a_id": ["a", "a", "b"] * 4, "node_b_id": ["b", "c", "c"] * 4,
                          "speed_kmh": np.arange(12, dtype=np.float32)})
    out = tmp_path / "sink"
    write_dataset(out, frame, pd.DataFrame({"node_id": ["a", "b", "c"]}), None, {})
    series = load_series(out, quiet)
    assert series.node_ids.tolist() == ["a", "b", "c"]
    speed = frame["speed_kmh"].to_numpy().reshape(4, 3)  # per time: a->b, a->c, b->c
    np.testing.assert_allclose(series.speed[:, 0], speed[:, :2].mean(1))  # a: its two outgoing segments
    np.testing.assert_allclose(series.speed[:, 1], speed[:, 2])          # b: b->c
    np.testing.assert_allclose(series.speed[:, 2], speed[:, 1:].mean(1))  # c, a sink: a->c and b->c entering it
    bad = tmp_path / "duplicate"
    write_dataset(bad, pd.concat([frame, frame.iloc[:1]]), pd.DataFrame({"node_id": ["a"]}), None, {})
    with pytest.raises(KilnError, match="several rows for the same \\(timestamp, node_a_id, node_b_id\\)"):
        load_series(bad, quiet)
    missing = tmp_path / "missing"
    write_dataset(missing, frame.drop(columns=["node_b_id"]), pd.DataFrame({"node_id": ["a"]}), None, {})
    with pytest.raises(KilnError, match="lacks column\\(s\\) node_b_id"):
        load_series(missing, quiet)


# ---------------------------------------------------------------- bad input

def test_missing_columns_are_named(tmp_path):
    records, nodes, edges = simulate_city(days=1, seed=1)
    out = tmp_path / "bad"
    write_dataset(out, records.drop(columns=["speed_kmh", "node_id"]), nodes, edges, {})
    with pytest.raises(KilnError, match="lacks column\\(s\\) node_id, speed_kmh"):
        load_series(out, quiet)


def test_nans_are_imputed_and_counted(tmp_path):
    records, nodes, edges = simulate_city(days=1, seed=1)
    records.loc[[5, 70, 300], "speed_kmh"] = np.nan
    records.loc[[8, 9], "wind_speed_kmh"] = np.nan
    out = tmp_path / "nan"
    write_dataset(out, records, nodes, edges, {})
    lines = []
    series = load_series(out, lines.append)
    assert "  speed_kmh: filled 3 missing values" in lines and "  wind_speed_kmh: filled 2 missing values" in lines
    assert np.isfinite(series.speed).all() and np.isfinite(series.weather).all()
    t, n = divmod(70, 62)  # interpolated between the node's neighbouring readings
    neighbours = records["speed_kmh"].to_numpy()[[70 - 62, 70 + 62]]
    assert series.speed[t, n] == pytest.approx(neighbours.mean(), rel=1e-5)
    # the filled speeds are inputs, never targets: NaN in y wherever a window's target is one of them
    assert "  the 3 filled speeds are inputs only: no target, so no part of the loss or the metrics" in lines
    missing = np.zeros(series.speed.shape, bool)
    missing[divmod(5, 62)], missing[divmod(70, 62)], missing[divmod(300, 62)] = True, True, True
    np.testing.assert_array_equal(series.observed, ~missing)
    starts = np.arange(len(series.times) - 5)
    split = make_split(series, starts, 3, 2, normalisation(series, (0, len(series.times))), 96)
    targets = np.stack([missing[starts + 3 + j] for j in range(2)], -1)  # [S, N, 2]
    np.testing.assert_array_equal(np.isnan(split["y"]), targets)
    assert np.isfinite(split["x"]).all()


def test_isolated_nodes_warn_and_unknown_nodes_fail(tmp_path):
    records, nodes, edges = simulate_city(days=1, seed=1)
    lonely = edges[(edges.source != 0) & (edges.target != 0)]
    out = tmp_path / "lonely"
    write_dataset(out, records, nodes, lonely, {})
    lines = []
    load_series(out, lines.append)
    assert any(line.startswith("Warning: 1 node(s) have no edges") for line in lines)
    out = tmp_path / "unknown"
    write_dataset(out, records, nodes, pd.concat([edges, pd.DataFrame({"source": [0], "target": [999], "length_km": [1.0]})]), {})
    with pytest.raises(KilnError, match="names node\\(s\\) \\[999\\]"):
        load_series(out, quiet)


def test_damaged_parquet_is_one_line_error(tmp_path):
    out = small_city(tmp_path, days=1)
    (out / "traffic.parquet").write_bytes(b"not parquet")
    with pytest.raises(KilnError, match="cannot read .* as parquet"):
        load_series(out, quiet)


def city_with(tmp_path: Path, name: str, change) -> Path:
    """A one-day city whose records went through `change` (a function of the records frame)."""
    records, nodes, edges = simulate_city(days=1, seed=1)
    out = tmp_path / name
    write_dataset(out, change(records.copy()), nodes, edges, {})
    return out


def one_line_error(call, pattern: str) -> str:
    with pytest.raises(KilnError, match=pattern) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_readings_that_are_not_numbers_are_named(tmp_path):
    as_text = city_with(tmp_path, "text", lambda r: r.assign(speed_kmh=r["speed_kmh"].astype(str)))
    one_line_error(lambda: load_series(as_text, quiet), r"'.*traffic.parquet' column speed_kmh holds \w+ values, not numbers")
    wet = city_with(tmp_path, "wet", lambda r: r.assign(precipitation_mm=r["precipitation_mm"].map("{:.1f} mm".format)))
    one_line_error(lambda: load_series(wet, quiet), "column precipitation_mm holds .* values, not numbers")
    late = city_with(tmp_path, "late", lambda r: r.assign(timestamp="soon"))
    one_line_error(lambda: load_series(late, quiet), "column timestamp does not hold dates and times")


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e12, 300.5, -0.5])
def test_speeds_outside_the_plausible_range_are_refused_at_load(tmp_path, value):
    """A reading that is not a road speed (inf, a sensor's 1e12, negative) is named by row, before imputation or
    training could hide it in a non-finite loss; missing readings (NaN) stay allowed."""
    records = simulate_city(days=1, seed=1)[0]
    def change(r):
        r.loc[70, "speed_kmh"] = value
        r.loc[5, "speed_kmh"] = np.nan
        return r
    out = city_with(tmp_path, "bad", change)
    t, node = records.loc[70, "timestamp"], records.loc[70, "node_id"]
    one_line_error(lambda: load_series(out, quiet), rf"'.*traffic.parquet' row 70 \(timestamp {t}, node_id {node}\) has "
                                                    rf"speed_kmh {re.escape(f'{value:g}')}: speeds must be finite numbers from 0 to 300 km/h "
                                                    r"\(1 row\(s\) are not\)")


def test_a_text_node_id_with_a_newline_stays_on_the_message_s_line(tmp_path):
    def change(r):
        r["node_id"] = "road\n" + r["node_id"].astype(str)
        r.loc[70, "speed_kmh"] = -1.0
        return r
    out = city_with(tmp_path, "text ids", change)
    one_line_error(lambda: load_series(out, quiet), r"row 70 \(timestamp .*, node_id 'road\\n\d+'\) has speed_kmh -1")


def test_the_speed_bound_is_300_kmh_in_either_unit(tmp_path):
    assert MAX_SPEED == {"km/h": 300.0, "mph": pytest.approx(300 / 1.609344, abs=0.05)}
    fast = city_with(tmp_path, "mph", lambda r: r.rename(columns={"speed_kmh": "speed_mph"}).assign(speed_mph=190.0))
    one_line_error(lambda: load_series(fast, quiet), "has speed_mph 190: speeds must be finite numbers from 0 to 186.4 mph")
    hot = city_with(tmp_path, "hot", lambda r: r.assign(temperature_c=np.where(r.index == 3, np.inf, r["temperature_c"])))
    one_line_error(lambda: load_series(hot, quiet), "row 3 .* has temperature_c inf: weather must be finite")


LOS_SPEED = b"a,b,c\n" + b"".join(b"%d,61.5,62\n" % (60 + i % 3) for i in range(40))  # lines 2..41
LOS_ADJ = b"1,1,0\n1,1,1\n0,1,1\n"


@pytest.mark.parametrize("name, speed, adjacency, pattern", [
    ("binary adjacency", LOS_SPEED, bytes(range(256)), r"los_adj.csv' is not CSV text \(not UTF-8 at byte 128\)"),
    ("empty adjacency", LOS_SPEED, b"", r"los_adj.csv' has no rows of numbers"),
    ("text adjacency", LOS_SPEED, b"1,1,0\n1,x,1\n0,1,1\n", r"los_adj.csv' line 2, column 2: 'x' is not a number"),
    ("negative weight", LOS_SPEED, b"1,1,0\n1,1,-1\n0,1,1\n", r"los_adj.csv' line 2, column 3: -1 is not a finite non-negative edge weight"),
    ("binary speeds", bytes(range(256)) * 3, LOS_ADJ, r"los_speed.csv' is not CSV text"),
    ("NUL bytes", b"a,b,c\n1,\x00,2\n", LOS_ADJ, r"los_speed.csv' line 2, column 2: '\\x00' is not a number"),
    ("empty speeds", b"", LOS_ADJ, r"los_speed.csv' has no rows of numbers under its header"),
    ("header only", b"a,b,c\n", LOS_ADJ, r"los_speed.csv' has no rows of numbers under its header"),
    ("text speeds", LOS_SPEED.replace(b"61.5", b"fast", 1), LOS_ADJ, r"los_speed.csv' line 2, column 2: 'fast' is not a number"),
    ("blank speed", LOS_SPEED.replace(b",61.5,", b",,", 1), LOS_ADJ, r"los_speed.csv' line 2, column 2: '' is not a number"),
    ("truncated row", LOS_SPEED + b"60,61\n", LOS_ADJ, r"los_speed.csv' line 42 has 2 values, not 3 like the header: a truncated"),
    ("long row", LOS_SPEED.replace(b"62\n", b"62,63\n", 1), LOS_ADJ, r"los_speed.csv' line 2 has 4 values, not 3"),
    ("infinite speed", LOS_SPEED.replace(b"61.5", b"inf", 1), LOS_ADJ, r"los_speed.csv' line 2, column 2: inf is not a speed in mph \(0 to 186.4\)"),
    ("nan speed", LOS_SPEED.replace(b"61.5", b"nan", 1), LOS_ADJ, r"los_speed.csv' line 2, column 2: nan is not a speed"),
    ("huge speed", LOS_SPEED.replace(b"61.5", b"1e12", 1), LOS_ADJ, r"los_speed.csv' line 2, column 2: 1e\+12 is not a speed in mph"),
    ("twice the same detector", LOS_SPEED.replace(b"a,b,c", b"a,b,a"), LOS_ADJ, r"los_speed.csv' names a detector twice"),
    # files that would convert to a dataset the loader refuses
    ("weight beyond float32", LOS_SPEED, b"1,1,0\n1,1,1e39\n0,1,1\n", r"los_adj.csv' line 2, column 3: 1e\+39 is not a finite"),
    ("two rows", b"a,b,c\n60,61,62\n60,61,62\n", LOS_ADJ, r"los_speed.csv' has only 2 row\(s\) of speeds; a forecaster needs"),
])
def test_damaged_los_loop_files_are_one_line_errors_naming_file_and_line(tmp_path, name, speed, adjacency, pattern):
    src = tmp_path / "src"
    src.mkdir()
    (src / "los_speed.csv").write_bytes(speed)
    (src / "los_adj.csv").write_bytes(adjacency)
    one_line_error(lambda: convert_los_loop(src, tmp_path / "out", log=quiet), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


def test_a_clean_los_loop_file_converts_exactly(tmp_path):
    """The reader the damaged files go through gives the values as pandas reads them, blank lines skipped."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "los_speed.csv").write_bytes(LOS_SPEED.replace(b"\n", b"\r\n") + b"\n")
    (src / "los_adj.csv").write_bytes(LOS_ADJ)
    convert_los_loop(src, tmp_path / "out", log=quiet)
    frame = pd.read_parquet(tmp_path / "out" / "traffic.parquet")
    expected = pd.read_csv(src / "los_speed.csv").to_numpy(np.float32)
    np.testing.assert_array_equal(frame["speed_mph"].to_numpy().reshape(40, 3), expected)
    assert pd.read_csv(tmp_path / "out" / "nodes.csv")["sensor_id"].tolist() == ["a", "b", "c"]


# ---------------------------------------------------------------- writing datasets

def test_write_dataset_round_trip(tmp_path):
    records, nodes, edges = simulate_city(days=1, seed=2)
    out = tmp_path / "city"
    write_dataset(out, records, nodes, edges, {"seed": 2, "days": 1})
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "edges.csv", "nodes.csv", "traffic.parquet"]
    assert not (tmp_path / "city.tmp").exists() and [p.name for p in tmp_path.iterdir()] == ["city"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "traffic.parquet"), records)
    assert json.loads((out / "dataset.json").read_text()) == {"seed": 2, "days": 1}


def test_write_dataset_refuses_non_empty_and_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    records, nodes, edges = simulate_city(days=1, seed=2)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(KilnError, match="not empty"):
        write_dataset(taken, records, nodes, edges, {})
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "city"
    monkeypatch.setattr(pd.DataFrame, "to_csv", fail)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, records, nodes, edges, {})
    assert not out.exists() and not (tmp_path / "city.tmp").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary sibling left either


def test_tgcn_reference_tables_on_a_linear_series():
    """Persistence and T-GCN's linear SVR on a ramp of 1 mph per step: persistence lags 1, 2, 3 steps
    (MAE 2); the SVR predicts the mean of the next 3 steps exactly (within its epsilon 0.1) and repeats
    it over the horizon, so its errors are -1, 0, +1 (MAE 2/3)."""
    from kiln.recipes.traffic.references import tgcn_reference_tables

    rng = np.random.default_rng(0)
    speed = 10 + np.arange(300.0)[:, None] * np.ones(3) + rng.normal(0, 0.001, (300, 3))
    tables = tgcn_reference_tables(speed, {"15min": 3}, seq_len=12)
    assert tables["persistence"]["15min"]["mae"] == pytest.approx(2.0, abs=0.01)
    assert tables["linear_svr"]["15min"]["mae"] == pytest.approx(2 / 3, abs=0.1)


def test_linear_svr_solves_tgcn_libsvm_problem():
    """kiln's SVR (liblinear on centred data) against T-GCN's own call, libsvm's SVR(kernel='linear') on the raw
    speeds, on a series where libsvm converges quickly: the same forecasts to a fraction of an mph."""
    from sklearn.svm import SVR

    from kiln.recipes.traffic.references import fit_linear_svr, tgcn_windows

    rng = np.random.default_rng(0)
    speed = np.clip(60 + 0.5 * np.cumsum(rng.normal(0, 1, 480)), 20, 70)[:, None] + rng.normal(0, 0.3, (480, 2))
    x, y = tgcn_windows(speed[:400], 12, 3)
    x_new, _ = tgcn_windows(speed[400:], 12, 3)
    for j in range(2):
        expected = SVR(kernel="linear").fit(x[:, :, j], y.mean(1)[:, j]).predict(x_new[:, :, j])
        got = fit_linear_svr(x[:, :, j], y.mean(1)[:, j], x_new[:, :, j])
        assert np.abs(got - expected).max() < 0.1 and abs((got - expected).mean()) < 0.02


# ---------------------------------------------------------------- found by tests/fuzz/test_traffic_files.py

@pytest.mark.parametrize("edges_csv, pattern", [
    (b"\x99\xff", r"cannot read '.*edges.csv' as CSV"),                                # binary: a UnicodeDecodeError
    (b"", r"cannot read '.*edges.csv' as CSV \(No columns to parse from file\)"),
    (b"source,target\n0,1\n1,0,5\n", r"cannot read '.*edges.csv' as CSV \(Error tokenizing data"),  # a long row
    (b"source,target,weight\n0,1,x\n", r"'.*edges.csv' row 0 \(0 -> 1\) has weight 'x': weights must be finite non-negative"),
    (b"source,target,weight\n0,1,1\n1,0,\n", r"row 1 \(1 -> 0\) has weight 'nan'"),    # a blank weight, silently NaN
    (b"source,target,weight\n0,1,inf\n", r"has weight 'inf'"),
    (b"source,target,weight\n0,1,-1\n", r"has weight '-1'"),
    (b"source,target,weight\n0,1,-1\n1,0," + b"1" * 400 + b"\n", r"has weight '-1'"),  # with a 400-digit int: OverflowError
    (b"source,target\nx,1\n0,2.5\n", r"names node\(s\) \['0', 'x', 2.5\]"),  # text and number ids: sorted() raised TypeError
    (b'source,"tar\nget"\n0,1\n', r"needs columns source and target \(node ids\); it has \['source', 'tar\\ng"),
])
def test_a_damaged_edges_csv_is_one_line_error(tmp_path, edges_csv, pattern):
    out = small_city(tmp_path, days=1)
    (out / "edges.csv").write_bytes(edges_csv)
    one_line_error(lambda: load_series(out, quiet), pattern)


def test_records_without_their_keys_or_with_weather_error_codes_are_refused(tmp_path):
    no_node = city_with(tmp_path, "no node", lambda r: r.assign(node_id=r["node_id"].where(r.index != 9)))
    one_line_error(lambda: load_series(no_node, quiet), r"traffic.parquet' row 9 has no node_id \(1 row\(s\) have none\)")
    no_time = city_with(tmp_path, "no time", lambda r: r.assign(timestamp=r["timestamp"].where(r.index != 4)))
    one_line_error(lambda: load_series(no_time, quiet), "row 4 has no timestamp")
    # a sensor's error code, which overflowed the weather statistics (1e39: the float32 weather matrix)
    code = city_with(tmp_path, "code", lambda r: r.assign(wind_speed_kmh=np.where(r.index == 2, 1e12, r["wind_speed_kmh"])))
    one_line_error(lambda: load_series(code, quiet), r"row 2 .* has wind_speed_kmh 1e\+12: weather must be finite, within ±1e\+06")


def test_per_segment_records_with_ends_of_different_types_are_refused(tmp_path):
    times = np.repeat(pd.date_range("2025-01-06", periods=4, freq="15min").to_numpy(), 2)
    frame = pd.DataFrame({"run_id": 0, "timestamp": times, "node_a_id": [1, 2] * 4, "node_b_id": ["b", "c"] * 4,
                          "speed_kmh": 50.0})
    out = tmp_path / "mixed"
    write_dataset(out, frame, pd.DataFrame({"node_id": [1]}), None, {})
    one_line_error(lambda: load_series(out, quiet), "node_a_id and node_b_id hold ids that cannot be ordered together")
    missing = tmp_path / "missing"
    write_dataset(missing, frame.assign(node_b_id=["b", None] * 4), pd.DataFrame({"node_id": [1]}), None, {})
    one_line_error(lambda: load_series(missing, quiet), r"row 1 has no node_b_id \(4 row\(s\) have none\)")


def test_run_ids_that_do_not_compare_are_refused(tmp_path):
    """A run_id column of lists loaded, then failed in build_splits with numpy's ValueError."""
    lists = city_with(tmp_path, "lists", lambda r: r.assign(run_id=[[i, 1] for i in range(len(r))]))
    one_line_error(lambda: load_series(lists, quiet), "run_id, timestamp, node_id values that cannot be ordered")


def test_los_loop_through_speed_csv_is_the_same_dataset_as_through_los_loop(los_loop, tmp_path):
    from kiln.cli import main

    out = tmp_path / "generic"
    assert main(["data", "traffic", "--speed-csv", str(LOS_LOOP / "los_speed.csv"), "--adjacency-csv",
                 str(LOS_LOOP / "los_adj.csv"), "--interval-minutes", "5", "--unit", "mph", "--start", "2012-03-01",
                 "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "traffic.parquet"), pd.read_parquet(los_loop / "traffic.parquet"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "edges.csv"), pd.read_csv(los_loop / "edges.csv"))
    assert pd.read_csv(out / "nodes.csv")["sensor_id"].tolist() == pd.read_csv(los_loop / "nodes.csv")["sensor_id"].tolist()
    series = load_series(out, quiet)
    assert series.interval_minutes == 5 and series.speed.shape == (2016, 207)


def test_a_headerless_city_with_zeros_as_missing(tmp_path):
    from kiln.cli import main
    from kiln.recipes import get_recipe, load_recipe_config

    rng = np.random.default_rng(0)
    speed = rng.uniform(20, 60, (200, 4)).round(2)
    speed[[3, 50, 51], [0, 2, 2]] = 0
    np.savetxt(tmp_path / "speed.csv", speed, delimiter=",", fmt="%g")
    np.savetxt(tmp_path / "adj.csv", np.ones((4, 4)) - np.eye(4), delimiter=",", fmt="%g")
    out = tmp_path / "city"
    args = ["data", "traffic", "--speed-csv", str(tmp_path / "speed.csv"), "--adjacency-csv", str(tmp_path / "adj.csv"),
            "--interval-minutes", "15", "--zero-is-missing", "--start", "2015-01-05 06:00", "--no-header", "--out", str(out)]
    assert main(args) == 0
    records = pd.read_parquet(out / "traffic.parquet")
    assert records["speed_kmh"].isna().sum() == 3 and pd.read_csv(out / "nodes.csv")["sensor_id"].tolist() == [0, 1, 2, 3]
    assert records["timestamp"].iloc[0] == pd.Timestamp("2015-01-05 06:00") and records["timestamp"].diff().max() == pd.Timedelta("15min")
    info = json.loads((out / "dataset.json").read_text())
    assert (info["missing_readings"], info["unit"], info["num_edges"]) == (3, "km/h", 12)
    _, cfg = load_recipe_config(ROOT / "configs" / "traffic" / "tgcn_city.yaml", [f"data.dir={out}"])
    splits = get_recipe("traffic").load_data(cfg, quiet)
    assert torch.isfinite(splits.train["x"]).all() and splits.info["interval_minutes"] == 15


@pytest.mark.parametrize("extra, message", [
    (["--adjacency-csv", "adj.csv"], r"--speed-csv needs --interval-minutes"),
    (["--interval-minutes", "15"], r"--speed-csv needs --adjacency-csv"),
    (["--adjacency-csv", "adj.csv", "--interval-minutes", "15", "--start", "yesterday-ish"], r"--start 'yesterday-ish' is not a date"),
    (["--adjacency-csv", "missing.csv", "--interval-minutes", "15"], r"--adjacency-csv '.*missing.csv' not found"),
])
def test_speed_csv_flags_are_checked_in_one_line(tmp_path, capsys, extra, message):
    from kiln.cli import main

    (tmp_path / "speed.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (tmp_path / "adj.csv").write_text("0,1\n1,0\n")
    args = [a if not a.endswith(".csv") else str(tmp_path / a) for a in extra]
    assert main(["data", "traffic", "--speed-csv", str(tmp_path / "speed.csv"), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err and not (tmp_path / "out").exists()
    assert main(["data", "traffic", "--simulate", "--zero-is-missing", "--out", str(tmp_path / "out")]) == 2
    assert "--zero-is-missing: only for --speed-csv" in capsys.readouterr().err
    assert main(["data", "traffic", "--speed-csv", str(tmp_path / "speed.csv"), "--adjacency-csv", str(tmp_path / "adj.csv"),
                 "--interval-minutes", "15", "--days", "3", "--out", str(tmp_path / "out")]) == 2
    assert "--days: only for --simulate" in capsys.readouterr().err and not (tmp_path / "out").exists()
