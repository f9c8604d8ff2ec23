"""Traffic datasets: the Los-loop converter and loader on the real data, the T-GCN protocol, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kiln.errors import KilnError
from kiln.recipes.traffic.data import (build_splits, convert_los_loop, gather, load_series, split_bounds, split_starts,
                                       window_starts, write_dataset)
from kiln.recipes.traffic.sim import simulate_city
from kiln.recipes.traffic.task import strongest_edges, tgcn_table

LOS_LOOP = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "los-loop"
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


# ---------------------------------------------------------------- per-segment records (the seed's shape)

def test_per_segment_records_build_the_graph_and_node_speeds(tmp_path):
    from kiln.recipes.traffic.sim import segment_records

    records, nodes, edges = simulate_city(days=1, seed=3)
    segments = segment_records(records, edges, seed=3)
    assert list(segments.columns[:5]) == ["run_id", "timestamp", "node_a_id", "node_b_id", "speed_kmh"]
    assert len(segments) == 96 * 144 and segments["run_id"].nunique() == 96  # one run per timestamp, as the seed's
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


# ---------------------------------------------------------------- writing datasets

def test_write_dataset_round_trip(tmp_path):
    records, nodes, edges = simulate_city(days=1, seed=2)
    out = tmp_path / "city"
    write_dataset(out, records, nodes, edges, {"seed": 2, "days": 1})
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "edges.csv", "nodes.csv", "traffic.parquet"]
    assert not (tmp_path / "city.tmp").exists()
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
