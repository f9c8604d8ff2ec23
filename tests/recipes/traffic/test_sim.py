"""The simulated city: graph shape, record schema, determinism and the dynamics it promises."""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from kiln.recipes.traffic.sim import propagate_congestion, row_normalised_adjacency, simulate_city

NUM_NODES = 62
STEPS_PER_DAY = 96
RECORD_DTYPES = {
    "run_id": "int64",
    "timestamp": "datetime64[ns]",
    "node_id": "int64",
    "speed_kmh": "float32",
    "temperature_c": "float32",
    "wind_speed_kmh": "float32",
    "precipitation_mm": "float32",
}


@pytest.fixture(scope="module")
def city():
    """The default four weeks: cheap (well under a second) and enough for the statistics."""
    return simulate_city(seed=0)


@pytest.fixture(scope="module")
def city_speed(city):
    """City-mean speed per timestamp, with the weather and calendar of that timestamp."""
    records = city[0]
    frame = records.groupby("timestamp").agg(speed=("speed_kmh", "mean"), precip=("precipitation_mm", "first"))
    frame["hour"] = frame.index.hour
    frame["weekend"] = frame.index.day_of_week >= 5
    return frame


def speed_matrix(records):
    """Speeds as [T, N] (records are sorted by timestamp, then node)."""
    return records["speed_kmh"].to_numpy().reshape(-1, NUM_NODES)


# -----------------------------------------------------------------------------
# graph


def test_graph_is_a_connected_two_way_street_network(city):
    _, nodes, edges = city
    assert list(nodes.columns) == ["node_id", "lat", "lon", "free_flow_kmh"]
    assert list(edges.columns) == ["source", "target", "length_km"]
    assert nodes["node_id"].tolist() == list(range(NUM_NODES))
    assert len(edges) == 144
    pairs = set(zip(edges["source"], edges["target"]))
    assert len(pairs) == 144, "duplicate edges"
    assert all(s != t for s, t in pairs), "self loop"
    assert all((t, s) in pairs for s, t in pairs), "a road is missing its reverse direction"
    assert set(edges["source"]) | set(edges["target"]) <= set(range(NUM_NODES))
    graph = nx.Graph(list(pairs))
    graph.add_nodes_from(range(NUM_NODES))
    assert graph.number_of_edges() == 72
    assert nx.is_connected(graph)


def test_graph_geometry_is_plausible(city):
    _, nodes, edges = city
    assert nodes["lat"].between(10.70, 10.85).all() and nodes["lon"].between(106.63, 106.77).all()
    assert nodes["free_flow_kmh"].between(10, 60).all()
    assert nodes["free_flow_kmh"].std() > 2, "arterials and side streets should differ"
    assert edges["length_km"].between(0.1, 2.0).all()
    # both directions of a road have the same length
    lengths = dict(zip(zip(edges["source"], edges["target"]), edges["length_km"]))
    assert all(lengths[(t, s)] == length for (s, t), length in lengths.items())


# -----------------------------------------------------------------------------
# schema and determinism


def test_record_schema_and_regular_timestamps():
    days = 3
    records, _, _ = simulate_city(days=days, seed=5)
    assert list(records.columns) == list(RECORD_DTYPES)
    assert {col: str(dtype) for col, dtype in records.dtypes.items()} == RECORD_DTYPES
    assert len(records) == days * STEPS_PER_DAY * NUM_NODES
    assert not records.isna().any().any()
    # sorted by timestamp then node, every node at every timestamp
    assert records["node_id"].tolist() == list(range(NUM_NODES)) * (days * STEPS_PER_DAY)
    stamps = records["timestamp"].drop_duplicates()
    expected = pd.date_range("2025-01-06", periods=days * STEPS_PER_DAY, freq="15min")
    assert (stamps.to_numpy() == expected.to_numpy()).all()
    assert (records["timestamp"].diff().dropna().isin([pd.Timedelta(0), pd.Timedelta(minutes=15)])).all()
    # one collection run per day
    assert (records["run_id"].to_numpy() == (records["timestamp"] - pd.Timestamp("2025-01-06")).dt.days.to_numpy()).all()
    assert records["run_id"].unique().tolist() == list(range(days))


def test_other_interval_and_start():
    records, _, _ = simulate_city(days=2, interval_minutes=30, start="2025-03-01")
    assert len(records) == 2 * 48 * NUM_NODES
    stamps = records["timestamp"].drop_duplicates()
    assert stamps.iloc[0] == pd.Timestamp("2025-03-01") and (stamps.diff().dropna() == pd.Timedelta(minutes=30)).all()
    assert records["run_id"].unique().tolist() == [0, 1]
    with pytest.raises(ValueError):
        simulate_city(days=1, interval_minutes=7)
    with pytest.raises(ValueError):
        simulate_city(days=0)


def test_weather_is_city_wide():
    records, _, _ = simulate_city(days=2, seed=1)
    per_step = records.groupby("timestamp")[["temperature_c", "wind_speed_kmh", "precipitation_mm"]].nunique()
    assert (per_step == 1).all().all()


def test_same_seed_same_city_other_seed_other_speeds():
    a = simulate_city(days=2, seed=7)
    b = simulate_city(days=2, seed=7)
    for left, right in zip(a, b):
        pd.testing.assert_frame_equal(left, right)
    c = simulate_city(days=2, seed=8)
    assert not np.allclose(a[0]["speed_kmh"], c[0]["speed_kmh"])


def test_default_generation_is_fast():
    begin = time.perf_counter()
    simulate_city()
    assert time.perf_counter() - begin < 2.0


# -----------------------------------------------------------------------------
# statistics and dynamics


def test_overall_statistics_are_plausible(city):
    records = city[0]
    speed = records["speed_kmh"]
    assert 18 <= speed.mean() <= 25
    assert 5.5 <= speed.std() <= 8.5
    assert speed.min() >= 3.0
    weather = records.drop_duplicates("timestamp")
    assert 0.5 <= (weather["precipitation_mm"] == 0).mean() < 1, "mostly dry, but it does rain"
    assert (weather["precipitation_mm"] >= 0).all()
    assert 0.05 <= weather["precipitation_mm"].mean() <= 0.5
    assert weather["precipitation_mm"].max() > 2, "rain comes in bursts of a few mm"
    assert 26 <= weather["temperature_c"].mean() <= 29 and 1 <= weather["temperature_c"].std() <= 3
    assert 4 <= weather["wind_speed_kmh"].mean() <= 8 and (weather["wind_speed_kmh"] >= 0).all()


def test_daily_and_weekly_cycle(city_speed):
    weekday = city_speed[~city_speed["weekend"]]
    weekend = city_speed[city_speed["weekend"]]
    rush_hours = [7, 8, 17, 18]
    weekday_rush = weekday[weekday["hour"].isin(rush_hours)]["speed"].mean()
    weekday_night = weekday[weekday["hour"].isin([0, 1, 2, 3])]["speed"].mean()
    weekend_rush = weekend[weekend["hour"].isin(rush_hours)]["speed"].mean()
    assert weekday_rush < weekday_night - 5
    assert weekend_rush > weekday_rush + 3
    # both rush peaks exist: morning rush slower than late morning, evening rush slower than afternoon
    by_hour = weekday.groupby("hour")["speed"].mean()
    assert by_hour[8] < by_hour[10] and by_hour[17] < by_hour[14]


def test_rain_lowers_speed_by_regression(city_speed):
    # OLS of city-mean speed on precipitation, controlling for hour of day x weekday/weekend
    cell = (city_speed["hour"] * 2 + city_speed["weekend"]).to_numpy()
    dummies = np.eye(48)[cell]
    x = np.column_stack([city_speed["precip"].to_numpy(dtype=float), dummies])
    y = city_speed["speed"].to_numpy(dtype=float)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma2 = resid @ resid / (len(y) - x.shape[1])
    stderr = np.sqrt(sigma2 * np.linalg.pinv(x.T @ x)[0, 0])
    assert beta[0] < -0.3, f"rain coefficient {beta[0]:.2f} km/h per mm"
    assert beta[0] / stderr < -5


def test_rainy_steps_are_slower_than_dry_steps_at_the_same_hour(city_speed):
    rainy = city_speed["precip"] > 0
    dry_mean = city_speed[~rainy].groupby(["hour", "weekend"])["speed"].mean()
    rain = city_speed[rainy]
    baseline = dry_mean.reindex(pd.MultiIndex.from_arrays([rain["hour"], rain["weekend"]])).to_numpy()
    assert rainy.sum() > 20
    assert np.nanmean(rain["speed"].to_numpy() - baseline) < -1.0


def test_rain_acts_on_the_same_step(city_speed):
    # when rain starts, speed drops at that very step, more than usual for that time of day
    change = city_speed["speed"].diff()
    onset = (city_speed["precip"] > 0) & (city_speed["precip"].shift(1) == 0)
    usual = change.groupby([city_speed["hour"], city_speed["weekend"]]).transform("mean")
    assert onset.sum() >= 5
    assert (change - usual)[onset].mean() < -0.5


def test_congestion_spreads_to_neighbours(city):
    records, nodes, edges = city
    speed = speed_matrix(records)
    stamps = pd.DatetimeIndex(records["timestamp"].to_numpy()[::NUM_NODES])
    slot = stamps.hour * 4 + stamps.minute // 15 + 96 * (stamps.day_of_week >= 5)
    # anomaly = speed minus the node's usual speed at that time, minus the city-wide (weather) part
    anomaly = speed - pd.DataFrame(speed).groupby(np.asarray(slot)).transform("mean").to_numpy()
    anomaly -= anomaly.mean(axis=1, keepdims=True)
    z = (anomaly - anomaly.mean(axis=0)) / anomaly.std(axis=0)
    lagged = z[:-1].T @ z[1:] / (len(z) - 1)  # [i, j] = corr(node i at t-1, node j at t)
    adjacent = np.zeros((NUM_NODES, NUM_NODES), bool)
    adjacent[edges["source"], edges["target"]] = True
    apart = ~adjacent & ~np.eye(NUM_NODES, dtype=bool)
    assert lagged[adjacent].mean() > lagged[apart].mean() + 0.05


def test_a_jam_spreads_one_road_per_step():
    # a path 0 - 1 - 2 - 3: a jam held at node 0 reaches node k after k steps
    edges = pd.DataFrame({"source": [0, 1, 1, 2, 2, 3], "target": [1, 0, 2, 1, 3, 2], "length_km": 0.5})
    transition = row_normalised_adjacency(edges, 4)
    np.testing.assert_allclose(transition.sum(axis=1), 1.0)
    target = np.zeros((6, 4))
    target[:, 0] = 0.8
    congestion = propagate_congestion(target, transition, retention=0.8, spread=0.4, noise=np.zeros((6, 4)))
    assert congestion[0, 0] > 0 and (congestion[0, 1:] == 0).all()
    for k in range(1, 4):
        assert congestion[k - 1, k] == 0 and congestion[k, k] > 0
    assert congestion[-1, 0] > congestion[-1, 1] > congestion[-1, 2] > congestion[-1, 3] > 0
