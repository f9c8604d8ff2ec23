"""Simulated city for traffic-speed forecasting: a small seeded stand-in for real sensor data.

The city is a jittered 8x8 street grid around Ho Chi Minh City (10.77 N, 106.70 E) with two
blocks taken by parks: 62 intersections (the nodes) joined by 72 two-way roads (144 directed
edges): a random spanning tree that takes the arterials (two rows, two columns) first, plus a
few extra streets.
Every node carries a congestion level c in [0, C_MAX] that follows, per time step,

    c[t] = clip(r * ((1 - s) * c[t-1] + s * P c[t-1]) + (1 - r) * target[t] + noise, 0, C_MAX)

with P the row-normalised adjacency, r the per-step retention and s the share that comes from
the neighbours, so a jam spreads along roads over the next steps. target is the congestion the
node would settle at: a daily demand cycle (weekday rush peaks, calmer weekends) scaled per
node, plus Poisson incidents at random nodes, plus extra traffic while it rains. Weather is
city-wide: a daily temperature cycle, AR(1) wind and rain episodes from an on/off Markov chain.
Speed = free_flow * (1 - c) * rain_factor + noise, where rain_factor acts at the same time step.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

# road network
GRID = 8  # intersections per side of the street grid
ARTERIAL_LINES = (2, 5)  # grid rows and columns that are arterial roads
PARK_CELLS = 2  # interior blocks removed from the grid (never on an arterial)
NUM_ROADS = 72  # undirected roads; each is stored as two directed edges
CENTER_LAT, CENTER_LON = 10.772, 106.698  # District 1, Ho Chi Minh City
SPACING_DEG = 0.0045  # about 500 m between neighbouring intersections
JITTER_DEG = 0.0008  # streets are not a perfect grid
DETOUR = (1.05, 1.25)  # road length / straight-line distance
EARTH_RADIUS_KM = 6371.0
FREE_FLOW_ARTERIAL, FREE_FLOW_SIDE, FREE_FLOW_SPREAD = 34.0, 24.5, 4.5  # km/h

# congestion dynamics
TAU_MINUTES = 75.0  # how long congestion lingers: retention r = exp(-interval / TAU)
SPREAD = 0.35  # share of the retained congestion that comes from the neighbours
C_MAX = 0.85  # full jam: speed falls to 15% of free flow (before rain)
CONGESTION_NOISE = 0.03  # per-step random kicks of each node's congestion
SPEED_NOISE_KMH = 1.0  # sensor noise
MIN_SPEED_KMH = 3.0
INCIDENTS_PER_DAY = 12.0  # city-wide Poisson rate
INCIDENT_MINUTES = (30, 150)  # uniform duration range
INCIDENT_SEVERITY = (0.3, 0.7)  # added to the node's target congestion

# weather
TEMP_MEAN_C, TEMP_AMPLITUDE_C, TEMP_PEAK_HOUR = 27.5, 2.4, 14.5
TEMP_NOISE_C, TEMP_NOISE_HOURS = 0.8, 12.0  # slow day-to-day drift (AR(1) std, time constant)
WIND_MEAN_KMH, WIND_STD_KMH, WIND_HOURS = 6.0, 3.3, 3.0  # AR(1) wind
WIND_AFTERNOON_KMH = 1.5  # afternoon breeze amplitude
RAIN_STARTS_PER_HOUR = (0.015, 0.25, 15.5, 2.5)  # base, afternoon peak, peak hour, width (hours)
RAIN_EPISODE_MINUTES = 60.0  # mean episode length (geometric)
RAIN_MEAN_MM_PER_HOUR = 10.0  # mean episode intensity (exponential), heavy tropical showers
RAIN_MAX_MM_PER_HOUR = 60.0  # cloudbursts are capped
RAIN_GUST_KMH, RAIN_COOLING_C = 3.0, 1.5  # storms bring wind and cool the air
RAIN_SPEED_LOSS = 0.25  # at most a quarter of the speed lost to rain ...
RAIN_SCALE_MM_PER_HOUR = 6.0  # ... reached smoothly as the rain gets heavier (1.5 mm per 15 min)
RAIN_CONGESTION = 0.12  # extra target congestion in heavy rain (people take cars, drive slower)

RECORD_COLUMNS = ["run_id", "timestamp", "node_id", "speed_kmh", "temperature_c", "wind_speed_kmh", "precipitation_mm"]
SEGMENT_COLUMNS = ["run_id", "timestamp", "node_a_id", "node_b_id", "speed_kmh", "temperature_c", "wind_speed_kmh", "precipitation_mm"]
SEGMENT_NOISE_KMH = 0.5  # a segment's own sensor noise on top of its two ends' average
MINUTES_PER_DAY = 24 * 60


# -----------------------------------------------------------------------------
# road network


def _grid_cells(rng):
    """(row, col) of the kept grid cells and whether each lies on an arterial, parks removed."""
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    arterial = np.isin(rows, ARTERIAL_LINES) | np.isin(cols, ARTERIAL_LINES)
    # only interior, non-arterial blocks become parks: the grid's only 2-cuts are a corner's two
    # neighbours (both on the border), so removing two interior cells keeps the grid connected
    interior = (rows > 0) & (rows < GRID - 1) & (cols > 0) & (cols < GRID - 1)
    parks = rng.choice(np.flatnonzero(interior & ~arterial), PARK_CELLS, replace=False)
    keep = np.setdiff1d(np.arange(GRID * GRID), parks)
    return rows[keep], cols[keep], arterial[keep]


def _candidate_streets(rows, cols):
    """Every grid segment between two kept cells: index pairs (i < j) and an is-arterial flag."""
    cell_index = np.full((GRID, GRID), -1)
    cell_index[rows, cols] = np.arange(rows.size)
    # horizontal segments run along a row, vertical ones along a column
    pairs = [(cell_index[:, :-1], cell_index[:, 1:], np.isin(np.arange(GRID), ARTERIAL_LINES)[:, None]),
             (cell_index[:-1, :], cell_index[1:, :], np.isin(np.arange(GRID), ARTERIAL_LINES)[None, :])]
    src = np.concatenate([a.ravel() for a, _, _ in pairs])
    dst = np.concatenate([b.ravel() for _, b, _ in pairs])
    on_line = np.concatenate([np.broadcast_to(line, a.shape).ravel() for a, _, line in pairs])
    kept = (src >= 0) & (dst >= 0)  # both ends still exist (not a park)
    return src[kept], dst[kept], on_line[kept]


def _choose_roads(src, dst, on_arterial, num_nodes, rng):
    """Mask of NUM_ROADS segments: a random spanning tree that favours arterials, plus extras."""
    # arterial segments are nearly free, so the tree takes them first; the rest is random
    weight = np.where(on_arterial, 0.01, 1.0) * (1.0 + rng.random(src.size))
    tree = minimum_spanning_tree(coo_matrix((weight, (src, dst)), shape=(num_nodes, num_nodes))).tocoo()
    tree_keys = np.minimum(tree.row, tree.col) * num_nodes + np.maximum(tree.row, tree.col)
    chosen = np.isin(src * num_nodes + dst, tree_keys)
    # extras in weight order: the arterial segment left out by the tree first, then random streets
    spare = np.flatnonzero(~chosen)
    chosen[spare[np.argsort(weight[spare])][: NUM_ROADS - chosen.sum()]] = True
    return chosen


def _haversine_km(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))


def build_city_graph(rng):
    """(nodes, edges, arterial flags): 62 intersections and 144 directed road segments."""
    rows, cols, arterial = _grid_cells(rng)
    n = rows.size
    lat = CENTER_LAT + (rows - (GRID - 1) / 2) * SPACING_DEG + rng.uniform(-JITTER_DEG, JITTER_DEG, n)
    lon = CENTER_LON + (cols - (GRID - 1) / 2) * SPACING_DEG + rng.uniform(-JITTER_DEG, JITTER_DEG, n)
    free_flow = np.where(arterial, FREE_FLOW_ARTERIAL, FREE_FLOW_SIDE) + rng.normal(0, FREE_FLOW_SPREAD, n)
    nodes = pd.DataFrame({"node_id": np.arange(n), "lat": lat.round(6), "lon": lon.round(6),
                          "free_flow_kmh": free_flow.round(2)})

    src, dst, on_arterial = _candidate_streets(rows, cols)
    chosen = _choose_roads(src, dst, on_arterial, n, rng)
    src, dst = src[chosen], dst[chosen]
    length = _haversine_km(lat[src], lon[src], lat[dst], lon[dst]) * rng.uniform(*DETOUR, src.size)
    # every road is stored in both directions with the same length
    edges = pd.DataFrame({"source": np.concatenate([src, dst]), "target": np.concatenate([dst, src]),
                          "length_km": np.tile(length.round(3), 2)})
    edges = edges.sort_values(["source", "target"], ignore_index=True)
    return nodes, edges, arterial


def row_normalised_adjacency(edges, num_nodes):
    """P[i, j] = 1 / degree(i) for every road i -> j, so P @ c averages the neighbours' congestion."""
    adjacency = np.zeros((num_nodes, num_nodes))
    adjacency[edges["source"].to_numpy(), edges["target"].to_numpy()] = 1.0
    return adjacency / adjacency.sum(axis=1, keepdims=True)


# -----------------------------------------------------------------------------
# weather


def _bump(hours, peak, width):
    """Gaussian bump over the hour of day, wrapping around midnight."""
    delta = (hours - peak + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (delta / width) ** 2)


def _ar1(num_steps, phi, std, rng):
    """Stationary AR(1) series with marginal std `std` (lfilter runs the recursion in C)."""
    innovations = rng.normal(0.0, std * np.sqrt(1 - phi**2), num_steps)
    innovations[0] = rng.normal(0.0, std)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -phi], innovations)


def _rain_rate(hours, interval_minutes, rng):
    """Rain intensity in mm/h per step: episodes from an on/off Markov chain, afternoon-heavy."""
    base, peak, peak_hour, width = RAIN_STARTS_PER_HOUR
    p_start = 1 - np.exp(-(base + peak * _bump(hours, peak_hour, width)) * interval_minutes / 60)
    p_stop = 1 - np.exp(-interval_minutes / RAIN_EPISODE_MINUTES)
    draws = rng.random(hours.size)
    raining = np.zeros(hours.size, bool)
    state = False
    for t in range(hours.size):  # scalar chain over time steps only
        state = draws[t] >= p_stop if state else draws[t] < p_start[t]
        raining[t] = state
    # one mean intensity per episode, varying step to step inside it (gamma, mean 1)
    episode = np.cumsum(raining & ~np.concatenate([[False], raining[:-1]]))
    intensity = rng.exponential(RAIN_MEAN_MM_PER_HOUR, episode.max() + 1)
    rate = np.minimum(intensity[episode] * rng.gamma(4.0, 0.25, hours.size), RAIN_MAX_MM_PER_HOUR)
    return np.where(raining, rate, 0.0)


def wetness(rate_mm_per_hour):
    """How hard it rains, 0 dry .. 1 downpour; rain's effects saturate instead of growing forever."""
    return 1 - np.exp(-rate_mm_per_hour / RAIN_SCALE_MM_PER_HOUR)


def rain_speed_factor(rate_mm_per_hour):
    """Multiplier on speed while it rains: 1 when dry, down to 1 - RAIN_SPEED_LOSS in a downpour."""
    return 1 - RAIN_SPEED_LOSS * wetness(rate_mm_per_hour)


def simulate_weather(hours, interval_minutes, rng):
    """City-wide temperature (C), wind (km/h), precipitation (mm per step) and rain rate (mm/h)."""
    num_steps = hours.size
    rate = _rain_rate(hours, interval_minutes, rng)
    temp_phi = np.exp(-interval_minutes / (TEMP_NOISE_HOURS * 60))
    temperature = (TEMP_MEAN_C + TEMP_AMPLITUDE_C * np.cos(2 * np.pi * (hours - TEMP_PEAK_HOUR) / 24)
                   + _ar1(num_steps, temp_phi, TEMP_NOISE_C, rng) - RAIN_COOLING_C * wetness(rate))
    wind_phi = np.exp(-interval_minutes / (WIND_HOURS * 60))
    # the afternoon bump is centred (its daily mean is 0.31) so the mean wind stays WIND_MEAN_KMH
    wind = (WIND_MEAN_KMH + WIND_AFTERNOON_KMH * (_bump(hours, 15.0, 3.0) - 0.31)
            + _ar1(num_steps, wind_phi, WIND_STD_KMH, rng) + RAIN_GUST_KMH * wetness(rate))
    precipitation = rate * interval_minutes / 60
    return temperature, np.maximum(wind, 0.0), precipitation, rate


# -----------------------------------------------------------------------------
# demand and incidents


def demand_profile(hours, day_of_week):
    """City-wide target congestion by hour of day: two weekday rush peaks, a calmer weekend."""
    weekday = (0.07 + 0.45 * _bump(hours, 7.25, 1.1) + 0.50 * _bump(hours, 17.25, 1.4)
               + 0.28 * _bump(hours, 12.5, 3.0))
    weekend = 0.07 + 0.30 * _bump(hours, 11.5, 3.0) + 0.30 * _bump(hours, 18.5, 2.0)
    weekend = weekend * np.where(day_of_week == 5, 1.1, 0.9)  # Saturday busier than Sunday
    return np.where(day_of_week >= 5, weekend, weekday)


def _node_demand_scale(nodes, arterial, rng):
    """How busy each intersection is: downtown and arterials more, with a random spread."""
    lat, lon = nodes["lat"].to_numpy(), nodes["lon"].to_numpy()
    dist = _haversine_km(lat, lon, CENTER_LAT, CENTER_LON)
    downtown = np.exp(-((dist / 1.5) ** 2))
    return (0.75 + 0.4 * downtown + 0.15 * arterial) * rng.lognormal(0.0, 0.15, lat.size)


def incident_load(num_steps, num_nodes, interval_minutes, rng):
    """Extra target congestion [T, N] from Poisson incidents (crashes, breakdowns, road works)."""
    days = num_steps * interval_minutes / MINUTES_PER_DAY
    count = rng.poisson(INCIDENTS_PER_DAY * days)
    start = rng.integers(0, num_steps, count)
    node = rng.integers(0, num_nodes, count)
    lo, hi = INCIDENT_MINUTES
    duration = np.maximum(1, np.round(rng.uniform(lo, hi, count) / interval_minutes).astype(int))
    severity = rng.uniform(*INCIDENT_SEVERITY, count)
    # expand each incident into its (step, node) cells without a loop over incidents
    offset = np.arange(duration.sum()) - np.repeat(np.cumsum(duration) - duration, duration)
    steps = np.repeat(start, duration) + offset
    inside = steps < num_steps
    load = np.zeros((num_steps, num_nodes))
    np.add.at(load, (steps[inside], np.repeat(node, duration)[inside]), np.repeat(severity, duration)[inside])
    return load


# -----------------------------------------------------------------------------
# congestion and speed


def propagate_congestion(target, transition, retention, spread, noise):
    """Run the congestion recursion over time; target and noise are [T, N], returns c [T, N]."""
    # one matrix that mixes a node's own and its neighbours' congestion from the previous step
    mix = retention * ((1 - spread) * np.eye(transition.shape[0]) + spread * transition)
    drive = (1 - retention) * target + noise
    congestion = np.empty_like(target)
    congestion[0] = np.clip(target[0] + noise[0], 0.0, C_MAX)  # start settled at the first target
    for t in range(1, target.shape[0]):
        congestion[t] = np.clip(mix @ congestion[t - 1] + drive[t], 0.0, C_MAX)
    return congestion


def simulate_city(days: int = 28, interval_minutes: int = 15, seed: int = 0,
                  start: str = "2025-01-06") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """-> (records, nodes, edges): one row per timestamp x node, the intersections, the roads."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if interval_minutes < 1 or MINUTES_PER_DAY % interval_minutes:
        raise ValueError(f"interval_minutes must divide a day (1440 minutes), got {interval_minutes}")
    rng = np.random.default_rng(seed)
    nodes, edges, arterial = build_city_graph(rng)
    num_nodes = len(nodes)
    steps_per_day = MINUTES_PER_DAY // interval_minutes
    num_steps = days * steps_per_day
    timestamps = pd.date_range(pd.Timestamp(start), periods=num_steps, freq=f"{interval_minutes}min")
    hours = (timestamps.hour + timestamps.minute / 60).to_numpy(dtype=float)
    day_of_week = timestamps.day_of_week.to_numpy()

    temperature, wind, precipitation, rain_rate = simulate_weather(hours, interval_minutes, rng)
    scale = _node_demand_scale(nodes, arterial, rng)
    target = (demand_profile(hours, day_of_week)[:, None] * scale[None, :]
              + incident_load(num_steps, num_nodes, interval_minutes, rng)
              + RAIN_CONGESTION * wetness(rain_rate)[:, None])
    retention = np.exp(-interval_minutes / TAU_MINUTES)
    # scale the kicks so their effect does not depend on the step length
    noise = rng.normal(0.0, CONGESTION_NOISE * np.sqrt(interval_minutes / 15), (num_steps, num_nodes))
    congestion = propagate_congestion(target, row_normalised_adjacency(edges, num_nodes), retention, SPREAD, noise)

    free_flow = nodes["free_flow_kmh"].to_numpy()
    speed = free_flow[None, :] * (1 - congestion) * rain_speed_factor(rain_rate)[:, None]
    speed = np.maximum(speed + rng.normal(0.0, SPEED_NOISE_KMH, speed.shape), MIN_SPEED_KMH)

    records = pd.DataFrame({
        "run_id": np.repeat(np.arange(num_steps) // steps_per_day, num_nodes).astype(np.int64),
        "timestamp": np.repeat(timestamps.as_unit("ns").to_numpy(), num_nodes),
        "node_id": np.tile(np.arange(num_nodes, dtype=np.int64), num_steps),
        "speed_kmh": speed.reshape(-1).astype(np.float32),
        "temperature_c": np.repeat(temperature, num_nodes).astype(np.float32),
        "wind_speed_kmh": np.repeat(wind, num_nodes).astype(np.float32),
        "precipitation_mm": np.repeat(precipitation, num_nodes).astype(np.float32),
    }, columns=RECORD_COLUMNS)
    return records, nodes, edges


def segment_records(records: pd.DataFrame, edges: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The original guide's record shape: one row per collection run (one timestamp) x directed road segment, its speed the
    average of its two intersections' plus noise, weather as at those intersections (city-wide)."""
    rng = np.random.default_rng([seed, 1])
    nodes = int(records["node_id"].max()) + 1
    speed = records["speed_kmh"].to_numpy().reshape(-1, nodes)                    # [T, N]: records are time-major
    a, b = edges["source"].to_numpy(), edges["target"].to_numpy()
    steps, segments = speed.shape[0], len(a)
    segment_speed = (speed[:, a] + speed[:, b]) / 2 + rng.normal(0.0, SEGMENT_NOISE_KMH, (steps, segments))
    first = records.iloc[::nodes]                                                   # one row per timestamp
    repeat = lambda column: np.repeat(first[column].to_numpy(), segments)  # noqa: E731
    return pd.DataFrame({
        "run_id": np.repeat(np.arange(steps, dtype=np.int64), segments),          # the guide's: one run per timestamp
        "timestamp": repeat("timestamp"),
        "node_a_id": np.tile(a, steps), "node_b_id": np.tile(b, steps),
        "speed_kmh": np.maximum(segment_speed, MIN_SPEED_KMH).reshape(-1).astype(np.float32),
        **{c: repeat(c) for c in ("temperature_c", "wind_speed_kmh", "precipitation_mm")},
    }, columns=SEGMENT_COLUMNS)
