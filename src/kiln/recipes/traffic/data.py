"""Traffic datasets: the long-format parquet + road graph on disk, windows of it in memory.

A dataset directory holds
  traffic.parquet  one row per timestamp x node: run_id, timestamp, node_id, speed_kmh (or speed_mph),
                   and optionally temperature_c, wind_speed_kmh, precipitation_mm;
                   or, as the original guide's data, one row per timestamp x road segment: node_a_id, node_b_id
                   in place of node_id (the graph is then built from the records; see segment_speeds);
                   speeds are numbers from 0 to MAX_SPEED (null where a reading is missing)
  nodes.csv        node_id[, lat, lon, ...]
  edges.csv        source, target[, weight | length_km] (per-node records only)
  dataset.json     provenance (source, interval, unit, seed)
Loading pivots it to a [time, node] speed matrix and a [time, 3] city weather matrix, then cuts
chronological splits into sliding windows (seq_len in -> pred_len out). Normalisation statistics come
from the training split only and travel with the model (best_model.pt's data_info).
Datasets are written whole or not at all (kiln.engine.files.dataset_dir).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from kiln.engine.files import check_new_directory, dataset_dir
from kiln.errors import KilnError
from kiln.recipes import dataset_info
from kiln.recipes.traffic.config import CityGenerator, TrafficConfig

KEYS = ("run_id", "timestamp", "node_id")
SEGMENT_KEYS = ("run_id", "timestamp", "node_a_id", "node_b_id")  # the original guide's per-segment records
SPEED_COLUMNS = {"speed_kmh": "km/h", "speed_mph": "mph"}
# Speeds above this are no road traffic (a sensor's error code, a unit mix-up): refused at load, not trained on.
MAX_SPEED = {"km/h": 300.0, "mph": round(300.0 / 1.609344, 1)}
WEATHER = ("temperature_c", "wind_speed_kmh", "precipitation_mm")
MAX_WEATHER = 1e6  # |weather| above this is a sensor's error code, and would overflow the float32 statistics
LOS_LOOP_START = "2012-03-01"  # a Thursday: Los-loop is one week, Thursday to Wednesday


@dataclass
class TrafficSeries:
    """A whole dataset as regular time series."""

    speed: np.ndarray            # [T, N] float32, missing readings imputed
    weather: np.ndarray | None   # [T, 3] float32 (city mean over nodes) or None
    times: pd.DatetimeIndex      # [T]
    run_ids: np.ndarray          # [T]
    node_ids: np.ndarray         # [N]
    edges: np.ndarray            # [2, E] node indices (0..N-1)
    edge_weight: np.ndarray      # [E]
    unit: str                    # "km/h" or "mph"
    interval_minutes: int
    description: dict = field(default_factory=dict)  # dataset.json
    observed: np.ndarray | None = None  # [T, N] bool, False where `speed` was imputed; None = every reading observed


# ---------------------------------------------------------------- reading

def minutes_of(times: pd.DatetimeIndex) -> np.ndarray:
    return times.to_numpy().astype("datetime64[m]").astype(np.int64)  # independent of the index's time unit


def load_data(cfg: TrafficConfig, log: Callable[[str], None] = print):
    """The dataset directory as Splits of windows (tensors) and their description."""
    import torch

    from kiln.engine.task import Splits

    series = load_series(Path(cfg.data.dir), log)
    arrays, info = build_splits(series, cfg.data.protocol, cfg.model.seq_len, cfg.model.pred_len,
                                cfg.data.val_fraction, cfg.data.test_fraction, log)
    if cfg.model.arch == "stmgt" and cfg.model.use_weather and not info["has_weather"]:
        log("No weather columns in this dataset: STMGT runs without its weather branch")
    tensors = {name: {k: torch.from_numpy(v) for k, v in split.items()} for name, split in arrays.items()}
    return Splits(**tensors, info=info)


def load_series(data_dir: Path, log: Callable[[str], None] = print) -> TrafficSeries:
    """Read, impute, validate and pivot a dataset directory; prints what the original guide's loader prints."""
    data_dir = Path(data_dir)
    path = data_dir / "traffic.parquet"
    frame, speed_col, keys = read_records(path, log)
    log("Preprocessing data...")
    speed, weather, segments = node_series(frame, speed_col, keys, path, log)
    observed = speed.notna().to_numpy()
    speed = impute(speed, speed_col, log)

    log("Validating data...")
    times = pd.DatetimeIndex(speed.index)
    steps = np.diff(minutes_of(times))
    if len(times) < 3:
        raise KilnError(f"'{path}' has only {len(times)} timestamps; a forecaster needs a time series")
    interval = int(np.median(steps))
    if (steps <= 0).any() or interval <= 0:
        raise KilnError(f"'{path}' has irregular timestamps; resample it to a fixed interval")
    values = speed.to_numpy(np.float32)
    run_ids = frame.groupby("timestamp")["run_id"].first().to_numpy()
    node_ids = speed.columns.to_numpy()
    log("  Data validation passed!")
    log(f"  Speed: mean={values.mean():.2f}, std={values.std():.2f} ({SPEED_COLUMNS[speed_col]})")
    if weather is not None:
        log(f"  Weather means: {[round(float(v), 2) for v in weather.mean(0)]}")
        log(f"  Weather stds: {[round(float(v), 2) for v in weather.std(0)]}")
    else:
        log("  Weather: none in this dataset (the model runs without its weather branch)")

    log("Building graph from traffic data...")
    edges, weight = read_graph(data_dir, node_ids, log, segments)
    log(f"Number of nodes: {len(node_ids)}")
    log(f"Number of edges: {edges.shape[1]}")
    return TrafficSeries(values, weather, times, run_ids, node_ids, edges, weight, SPEED_COLUMNS[speed_col], interval,
                         dataset_info(data_dir), None if observed.all() else observed)


def read_records(path: Path, log: Callable[[str], None]) -> tuple[pd.DataFrame, str, tuple[str, ...]]:
    """traffic.parquet with its columns and readings checked -> (records in time order, the speed column, the key
    columns)."""
    if not path.is_file():
        raise KilnError(f"'{path}' not found; make a dataset with: kiln data traffic --simulate --out {path.parent} (or --los-loop DIR)")
    log(f"Loading data from {path}...")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise KilnError(f"cannot read '{path}' as parquet ({str(err).splitlines()[0]}); regenerate it with kiln data traffic") from None
    speed_col = next((c for c in SPEED_COLUMNS if c in frame.columns), None)
    per_segment = "node_id" not in frame.columns and bool({"node_a_id", "node_b_id"} & set(frame.columns))
    keys = SEGMENT_KEYS if per_segment else KEYS
    missing = [c for c in keys if c not in frame.columns] + ([] if speed_col else ["speed_kmh"])
    if missing:
        raise KilnError(f"'{path}' lacks column(s) {', '.join(missing)}; it needs {', '.join(keys)}, speed_kmh "
                        f"(or speed_mph) and optionally {', '.join(WEATHER)}"
                        + ("" if per_segment else " (or node_a_id, node_b_id for records per road segment)"))
    weather_cols = [c for c in WEATHER if c in frame.columns]
    if weather_cols and len(weather_cols) < len(WEATHER):
        raise KilnError(f"'{path}' has weather column(s) {', '.join(weather_cols)} but lacks "
                        f"{', '.join(c for c in WEATHER if c not in weather_cols)}; give all three or none")
    check_readings(frame, speed_col, weather_cols, keys, path)
    try:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    except (ValueError, TypeError) as err:
        raise KilnError(f"'{path}' column timestamp does not hold dates and times ({str(err).splitlines()[0]}); "
                        "store them as timestamps") from None
    for column in keys:
        if frame[column].isna().any():
            row = int(np.argmax(frame[column].isna().to_numpy()))
            raise KilnError(f"'{path}' row {row} has no {column} ({int(frame[column].isna().sum())} row(s) have none); "
                            f"every record needs its {', '.join(keys)}")
    try:
        frame = frame.sort_values(list(keys[1:]))
        np.unique(frame["run_id"].to_numpy())  # the splits count runs
    except (TypeError, ValueError) as err:  # ids of several types, or lists, that do not compare
        raise KilnError(f"'{path}' has {', '.join(keys)} values that cannot be ordered ({str(err).splitlines()[0]}); "
                        "store each key column as one type of numbers or text") from None
    if frame.duplicated(list(keys[1:])).any():
        raise KilnError(f"'{path}' has several rows for the same ({', '.join(keys[1:])}); keep one per "
                        f"{'segment' if per_segment else 'node'} and time")
    return frame, speed_col, keys


def node_series(frame: pd.DataFrame, speed_col: str, keys: tuple[str, ...], path: Path,
                log: Callable[[str], None]) -> tuple[pd.DataFrame, np.ndarray | None, pd.DataFrame | None]:
    """Records in time order -> ([time, node] speeds, [time, 3] city weather or None, the road segments of
    per-segment records or None); a missing speed is NaN, missing weather is imputed and counted."""
    if keys == SEGMENT_KEYS:
        try:
            speed, segments = segment_speeds(frame, speed_col, log)
        except TypeError as err:  # the two ends' ids do not compare: numbers in one column, text in the other
            raise KilnError(f"'{path}' node_a_id and node_b_id hold ids that cannot be ordered together "
                            f"({str(err).splitlines()[0]}); store both as numbers or both as text") from None
    else:
        speed, segments = frame.pivot(index="timestamp", columns="node_id", values=speed_col), None
    if speed.isna().all().any():
        empty = speed.columns[speed.isna().all()].tolist()
        raise KilnError(f"node(s) {empty[:5]} in '{path}' have no speed readings at all; drop them from the data and the graph")
    weather = None
    if WEATHER[0] in frame.columns:
        table = frame.groupby("timestamp")[list(WEATHER)].mean()  # weather is city-wide
        for c in WEATHER:
            log(f"  {c}: filled {int(frame[c].isna().sum())} missing values")
        weather = table.interpolate(limit_direction="both").fillna(table.mean()).fillna(0.0).to_numpy(np.float32)
    return speed, weather, segments


def impute(speed: pd.DataFrame, speed_col: str, log: Callable[[str], None]) -> pd.DataFrame:
    """[time, node] speeds with each missing reading filled from the node's neighbouring readings in time (else its
    mean), so that every input window is complete. The filled readings are no targets: make_split leaves them out of
    the loss and the metrics (the masked MAE of DCRNN, Li et al. 2018, and the METR-LA/PEMS-BAY benchmarks)."""
    filled = int(speed.isna().sum().sum())
    log(f"  {speed_col}: filled {filled} missing values")
    if filled:
        log(f"  the {filled} filled speeds are inputs only: no target, so no part of the loss or the metrics")
    return speed.interpolate(limit_direction="both").fillna(speed.mean())


def check_readings(frame: pd.DataFrame, speed_col: str, weather_cols: list[str], keys: tuple[str, ...], path: Path) -> None:
    """Speeds and weather are numbers (null = a missing reading, imputed later); speeds lie in 0..MAX_SPEED of their
    unit and weather is finite. The first row that breaks this is named, counted from 0 in the file's order."""
    for column in [speed_col, *weather_cols]:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise KilnError(f"'{path}' column {column} holds {values.dtype} values, not numbers; store readings as numbers "
                            "(null where one is missing)")
        unit = SPEED_COLUMNS.get(column)
        valid = values.between(0, MAX_SPEED[unit]) if unit else values.between(-MAX_WEATHER, MAX_WEATHER)
        bad = ~(values.isna() | valid)
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            ids = (frame[k].iloc[row] for k in keys[1:])  # a text id in quotes, so a newline in it stays on the line
            where = ", ".join(f"{k} {v!r}" if isinstance(v, str) else f"{k} {v}" for k, v in zip(keys[1:], ids))
            rule = (f"speeds must be finite numbers from 0 to {MAX_SPEED[unit]:g} {unit}" if unit
                    else f"weather must be finite, within ±{MAX_WEATHER:g}")
            raise KilnError(f"'{path}' row {row} ({where}) has {column} {values.iloc[row]:g}: {rule} ({int(bad.sum())} "
                            f"row(s) are not); fix or drop them")


def segment_speeds(frame: pd.DataFrame, speed_col: str, log: Callable[[str], None]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Records per road segment (node_a_id -> node_b_id) -> ([time, node] speeds, the segments as edges).

    The nodes are every id named as either end. A node's speed at a time is the mean speed of the segments
    leaving it (node_a_id), i.e. how fast traffic moves out of that intersection; a node that no segment leaves
    takes the mean of the segments entering it. (The guide's loader gave each node the speed of one of its
    outgoing segments, whichever row came last, and 0 to a node without one.)"""
    nodes = np.array(sorted(set(frame["node_a_id"]).union(frame["node_b_id"])))
    leaving = frame.pivot_table(index="timestamp", columns="node_a_id", values=speed_col, aggfunc="mean", dropna=False)
    entering = frame.pivot_table(index="timestamp", columns="node_b_id", values=speed_col, aggfunc="mean", dropna=False)
    sinks = np.setdiff1d(nodes, leaving.columns.to_numpy())
    speed = pd.concat([leaving, entering[sinks]], axis=1).reindex(columns=nodes)
    segments = frame[["node_a_id", "node_b_id"]].drop_duplicates().rename(columns={"node_a_id": "source", "node_b_id": "target"})
    log(f"  {len(segments)} road segments (node_a_id -> node_b_id) between {len(nodes)} nodes; a node's speed is the "
        f"mean of the segments leaving it" + (f" ({len(sinks)} without one: the segments entering it)" if len(sinks) else ""))
    return speed, segments


def read_graph(data_dir: Path, node_ids: np.ndarray, log: Callable[[str], None],
               segments: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """edges.csv, or the segments of per-segment records -> (edge index [2, E] in node order, weight [E]).
    nodes.csv (lat/lon) is read by the report."""
    edges_path = data_dir / "edges.csv"
    if segments is not None:
        if edges_path.is_file():
            log(f"  {edges_path} is not used: the graph comes from the segment records")
        edges_path, edges = Path("the segment records"), segments
    elif not edges_path.is_file():
        raise KilnError(f"'{edges_path}' not found; a traffic dataset needs its road graph as edges.csv (source,target[,weight])")
    else:
        try:
            edges = pd.read_csv(edges_path)
        except ValueError as err:  # pandas' parser errors and a binary file's UnicodeDecodeError are ValueErrors
            raise KilnError(f"cannot read '{edges_path}' as CSV ({str(err).strip().splitlines()[0]}); "
                            "it needs a header row source,target[,weight] and one road per line") from None
    if not {"source", "target"} <= set(edges.columns):
        raise KilnError(f"'{edges_path}' needs columns source and target (node ids); it has {list(edges.columns)}")
    index = pd.Series(np.arange(len(node_ids)), index=node_ids)
    unknown = sorted(set(edges["source"]).union(edges["target"]) - set(node_ids), key=repr)
    if unknown:
        raise KilnError(f"'{edges_path}' names node(s) {unknown[:5]} that have no speeds in traffic.parquet; "
                        f"the graph has {len(set(edges['source']).union(edges['target']))} nodes, the speed data {len(node_ids)}")
    edges = edges[edges["source"] != edges["target"]]  # self loops are added by the model where it wants them
    pairs = np.stack([index[edges["source"]].to_numpy(), index[edges["target"]].to_numpy()])
    weight = np.ones(pairs.shape[1], np.float32)
    if "weight" in edges:
        weight = pd.to_numeric(edges["weight"].astype(str), errors="coerce").to_numpy(np.float64)  # text: a 400-digit int is inf
        bad = ~((weight >= 0) & (weight <= np.finfo(np.float32).max))  # NaN (a blank or text) fails both comparisons
        if bad.any():
            row = int(np.argmax(bad))
            raise KilnError(f"'{edges_path}' row {edges.index[row]} ({edges['source'].iloc[row]} -> {edges['target'].iloc[row]}) "
                            f"has weight {str(edges['weight'].iloc[row])!r}: weights must be finite non-negative numbers "
                            f"({int(bad.sum())} row(s) are not); fix or drop them")
        weight = weight.astype(np.float32)
    isolated = sorted(set(range(len(node_ids))) - set(pairs.ravel().tolist()))
    if isolated:
        log(f"Warning: {len(isolated)} node(s) have no edges (e.g. {node_ids[isolated][:5].tolist()}); "
            "they are forecast from their own history only")
    return pairs.astype(np.int64), weight


# ---------------------------------------------------------------- windows and splits

def window_starts(times: pd.DatetimeIndex, lo: int, hi: int, span: int, interval: int) -> np.ndarray:
    """Starts i in [lo, hi - span] whose `span` steps are consecutive (no gap in the timestamps)."""
    if hi - lo < span:
        return np.zeros(0, np.int64)
    gap = np.concatenate([[0], (np.diff(minutes_of(times)) != interval).astype(np.int64)])
    segment = np.cumsum(gap)
    starts = np.arange(lo, hi - span + 1)
    return starts[segment[starts] == segment[starts + span - 1]]


def gather(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """values[starts[k] + j] for j < length, NaN past the end: [len(starts), length, ...]."""
    idx = starts[:, None] + np.arange(length)
    padded = np.concatenate([values, np.full((length,) + values.shape[1:], np.nan, values.dtype)])
    return padded[idx]


def split_bounds(num_steps: int, protocol: str, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    if protocol == "tgcn":  # T-GCN: the first int(0.8 T) steps train, the rest test
        train_end = int(num_steps * 0.8)
        val_start = train_end - int(round(train_end * val_fraction))
        return {"train": (0, val_start), "val": (val_start, train_end), "test": (train_end, num_steps)}
    val_start = int(round(num_steps * (1 - val_fraction - test_fraction)))
    test_start = int(round(num_steps * (1 - test_fraction)))
    return {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, num_steps)}


def tgcn_horizons(interval_minutes: int) -> dict[str, int]:
    """Steps that make 15/30/45/60 minutes at this sampling interval (only those that divide evenly)."""
    return {f"{m}min": m // interval_minutes for m in (15, 30, 45, 60) if m % interval_minutes == 0}


def normalisation(series: TrafficSeries, train: tuple[int, int]) -> dict:
    speed = series.speed[train[0]:train[1]]
    stats = {"speed_mean": float(speed.mean()), "speed_std": float(speed.std())}
    if series.weather is not None:
        weather = series.weather[train[0]:train[1]]
        stats["weather_mean"] = weather.mean(0).tolist()
        stats["weather_std"] = np.maximum(weather.std(0), 1e-3).tolist()  # a constant column must not divide by 0
    return stats


def make_split(series: TrafficSeries, starts: np.ndarray, seq_len: int, pred_len: int, stats: dict,
               steps_per_day: int) -> dict[str, np.ndarray]:
    """Windows as arrays: x [S, N, seq] normalised (missing readings imputed), y [S, N, pred] raw (NaN past the data
    and where the reading is missing: no target), calendar, weather."""
    span = seq_len + pred_len
    x = gather(series.speed, starts, seq_len)
    y = gather(series.speed, starts + seq_len, pred_len)
    if series.observed is not None:
        y = np.where(gather(series.observed.astype(np.float64), starts + seq_len, pred_len) == 1, y, np.nan)
    minutes = (series.times.hour * 60 + series.times.minute).to_numpy()
    calendar = np.stack([series.times.hour.to_numpy(), series.times.day_of_week.to_numpy(),
                         minutes // series.interval_minutes % steps_per_day], -1)
    cal = gather(calendar.astype(np.float64), starts, span)
    cal = np.nan_to_num(cal, nan=0).astype(np.int64)
    out = {
        "x": ((x - stats["speed_mean"]) / stats["speed_std"]).transpose(0, 2, 1).astype(np.float32),
        "y": y.transpose(0, 2, 1).astype(np.float32),
        "hour": cal[..., 0], "dow": cal[..., 1], "slot": cal[..., 2],
    }
    if series.weather is not None:
        w = gather(series.weather, starts, span)
        w = np.nan_to_num((w - np.array(stats["weather_mean"])) / np.array(stats["weather_std"]))
        out["weather"] = w.astype(np.float32)
    return out


def split_starts(series: TrafficSeries, bounds: dict[str, tuple[int, int]], protocol: str, seq_len: int,
                 pred_len: int) -> dict[str, np.ndarray]:
    """The first step of every window of each split. Under the tgcn protocol the test windows are T-GCN's:
    every start with at least the 15-minute block of targets, NaN where the targets run past the data."""
    out = {}
    for name, (lo, hi) in bounds.items():
        if name == "test" and protocol == "tgcn":
            shortest = min(tgcn_horizons(series.interval_minutes).values(), default=pred_len)
            starts = np.arange(lo, hi - seq_len - shortest)  # range(len - seq - pre) as in T-GCN's code
        else:
            starts = window_starts(series.times, lo, hi, seq_len + pred_len, series.interval_minutes)
        if len(starts) == 0:
            raise KilnError(f"the {name} split ({hi - lo} steps) is shorter than seq_len + pred_len = {seq_len + pred_len}; "
                            "use more data or shorter windows")
        out[name] = starts
    return out


def build_splits(series: TrafficSeries, protocol: str, seq_len: int, pred_len: int, val_fraction: float,
                 test_fraction: float, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """-> ({split: arrays}, info), windows as split_starts() places them."""
    bounds = split_bounds(len(series.times), protocol, val_fraction, test_fraction)
    stats = normalisation(series, bounds["train"])
    steps_per_day = max(1, 1440 // series.interval_minutes)
    horizons = tgcn_horizons(series.interval_minutes)
    splits = {}
    for name, starts in split_starts(series, bounds, protocol, seq_len, pred_len).items():
        lo, hi = bounds[name]
        splits[name] = make_split(series, starts, seq_len, pred_len, stats, steps_per_day)
        runs = len(np.unique(series.run_ids[lo:hi]))
        log(f"Split: {name}")
        log(f"  Runs: {runs}")
        log(f"  Records: {(hi - lo) * series.speed.shape[1]}")
        log(f"Total samples: {len(starts)}")
    info = {
        **stats, "tgcn_references": series.description.get("tgcn_references"), "num_nodes": int(series.speed.shape[1]), "num_edges": int(series.edges.shape[1]),
        "edge_index": series.edges.tolist(), "edge_weight": series.edge_weight.tolist(), "node_ids": series.node_ids.tolist(),
        "has_weather": series.weather is not None, "unit": series.unit, "interval_minutes": series.interval_minutes,
        "steps_per_day": steps_per_day, "protocol": protocol, "bounds": bounds, "tgcn_horizons": horizons,
        "seq_len": seq_len, "pred_len": pred_len,
    }
    return splits, info


# ---------------------------------------------------------------- writing datasets

def write_dataset(out: Path, records: pd.DataFrame, nodes: pd.DataFrame, edges: pd.DataFrame | None, info: dict) -> None:
    """The dataset's files, written whole or not at all; no edges.csv when `edges` is None (per-segment records carry
    their graph)."""
    with dataset_dir(out) as tmp:
        records.to_parquet(tmp / "traffic.parquet", index=False)
        nodes.to_csv(tmp / "nodes.csv", index=False)
        if edges is not None:
            edges.to_csv(tmp / "edges.csv", index=False)
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")


def simulate_dataset(out: Path, settings: CityGenerator, log: Callable[[str], None] = print) -> dict:
    """`kiln data traffic --simulate`: the simulated city as a dataset directory; returns its dataset.json."""
    from kiln.recipes.traffic.sim import segment_records, simulate_city

    check_new_directory(out)  # before the work, not after it
    started = time.perf_counter()
    records, nodes, edges = simulate_city(**settings.model_dump(exclude={"per_segment"}))
    if settings.per_segment:  # the graph is then in the records: no edges.csv
        records, edges = segment_records(records, edges, settings.seed), None
    info = {"source": "simulated-city", **settings.model_dump(), "unit": "km/h", "num_nodes": len(nodes),
            "num_edges": int(records[["node_a_id", "node_b_id"]].drop_duplicates().shape[0]) if edges is None else len(edges),
            "num_steps": int(records["timestamp"].nunique()), "generation_seconds": round(time.perf_counter() - started, 3)}
    write_dataset(out, records, nodes, edges, info)
    shape = "per-segment records" if settings.per_segment else "records"
    log(f"Wrote {out}: simulated city, {len(nodes)} nodes, {info['num_edges']} edges, {settings.days} days of "
        f"{settings.interval_minutes}-minute {shape} ({len(records):,} rows) in {info['generation_seconds']:.2f}s")
    return info


# ---------------------------------------------------------------- T-GCN-format cities (Los-loop, and any other)
# A city in the layout T-GCN's data/ folder uses: a speed CSV (one row per time step, one column per sensor, with or
# without a header row of sensor ids) and an N x N adjacency CSV (no header) of non-negative edge weights.

LOS_LOOP_SOURCE = "the data/ folder of github.com/lehaifeng/T-GCN"
LOS_LOOP_REPAIR = f"repair the file or take it again from {LOS_LOOP_SOURCE}"
CITY_REPAIR = "repair the file (numbers only, one row per time step or per sensor)"
UNITS = {"kmh": ("speed_kmh", "km/h"), "mph": ("speed_mph", "mph")}
DEFAULT_START = "2000-01-03"  # a Monday: the first row's time where the file does not say


def read_number_table(path: Path, header: bool, repair: str = LOS_LOOP_REPAIR) -> tuple[list[str] | None, np.ndarray, list[int]]:
    """A CSV file of numbers only, under a header row of names if `header` -> (the names, the values [rows, columns]
    as float64, each row's line in the file). Anything else is a one-line error naming the file and the line, ending
    in `repair`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise KilnError(f"'{path}' is not CSV text (not UTF-8 at byte {err.start}); {repair}") from None
    except OSError as err:
        raise KilnError(f"'{path}' could not be read ({err.strerror}); check its permissions") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        for row in reader:
            if row:  # blank lines are skipped, as pandas does
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise KilnError(f"'{path}' line {reader.line_num} is not CSV ({err}); {repair}") from None
    names = rows.pop(0) if header and rows else None
    lines = lines[1:] if names is not None else lines
    if not rows:
        raise KilnError(f"'{path}' has no rows of numbers{' under its header' if header else ''}; {repair}")
    width = len(names) if names is not None else len(rows[0])
    for line, row in zip(lines, rows):
        if len(row) != width:
            raise KilnError(f"'{path}' line {line} has {len(row)} values, not {width} like the "
                            f"{'header' if names is not None else 'first line'}: a truncated or damaged row; {repair}")
    try:
        return names, np.array(rows, dtype=np.float64), lines
    except ValueError:
        line, column, value = next((line, j + 1, v) for line, row in zip(lines, rows) for j, v in enumerate(row) if not is_number(v))
        raise KilnError(f"'{path}' line {line}, column {column}: {value!r} is not a number; {repair}") from None


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def refuse_outside(values: np.ndarray, lo: float, hi: float, path: Path, lines: list[int], what: str,
                   repair: str = LOS_LOOP_REPAIR) -> None:
    """Every value finite and within [lo, hi], or a one-line error naming the first line that is not."""
    bad = ~((values >= lo) & (values <= hi))  # NaN and inf fail both comparisons
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise KilnError(f"'{path}' line {lines[row]}, column {column + 1}: {values[row, column]:g} is not {what} "
                        f"({int(bad.sum())} value(s) are not); {repair}")


def read_sensor_locations(path: Path, sensor_ids: np.ndarray) -> pd.DataFrame | None:
    """graph_sensor_locations.csv (sensor_id, latitude, longitude), in the detectors' order; None where it is absent."""
    if not path.is_file():
        return None
    try:
        loc = pd.read_csv(path)
    except ValueError as err:  # pandas' parser errors and a binary file's UnicodeDecodeError are ValueErrors
        raise KilnError(f"cannot read '{path}' as CSV ({str(err).splitlines()[0]}); fix it or move it away") from None
    missing = [c for c in ("sensor_id", "latitude", "longitude") if c not in loc.columns]
    if missing:
        raise KilnError(f"'{path}' lacks column(s) {', '.join(missing)}; fix it or move it away")
    loc = loc.drop_duplicates("sensor_id")
    return loc.set_index(loc["sensor_id"].astype(str)).reindex(sensor_ids)


def read_tgcn_city(speed_path: Path, adj_path: Path, unit: str, header: bool = True,
                   repair: str = CITY_REPAIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A speed CSV and an adjacency CSV, checked -> (sensor ids [N] (the header's, or 0..N-1 without one), speeds
    [T, N] as float64 in `unit` (UNITS), adjacency [N, N] as float32)."""
    names, speed, lines = read_number_table(speed_path, header, repair)
    if names is not None and len(set(names)) < len(names):
        raise KilnError(f"'{speed_path}' names a detector twice in its header; {repair}")
    limit = MAX_SPEED[UNITS[unit][1]]
    refuse_outside(speed, 0, limit, speed_path, lines, f"a speed in {UNITS[unit][1]} (0 to {limit:g})", repair)
    if len(speed) < 3:  # as load_series would refuse the dataset
        raise KilnError(f"'{speed_path}' has only {len(speed)} row(s) of speeds; a forecaster needs a time series "
                        f"(Los-loop has 2016 five-minute steps); {repair}")
    _, adjacency, adj_lines = read_number_table(adj_path, header=False, repair=repair)
    # float32 is what the dataset stores: a larger weight would become inf there
    refuse_outside(adjacency, 0, float(np.finfo(np.float32).max), adj_path, adj_lines, "a finite non-negative edge weight", repair)
    num_nodes = speed.shape[1]
    if adjacency.shape != (num_nodes, num_nodes):
        raise KilnError(f"'{adj_path}' is {adjacency.shape[0]}x{adjacency.shape[1]} but '{speed_path}' has {num_nodes} "
                        f"detectors; the adjacency must be {num_nodes}x{num_nodes}")
    ids = np.array(names) if names is not None else np.array([str(i) for i in range(num_nodes)])
    return ids, speed, adjacency.astype(np.float32)


def convert_tgcn_city(speed_path: Path, adj_path: Path, out: Path, *, interval_minutes: int, unit: str = "kmh",
                      start: str = DEFAULT_START, zero_is_missing: bool = False, tgcn_references: bool = False,
                      log: Callable[[str], None] = print, jobs: int | None = None, header: bool = True,
                      repair: str = CITY_REPAIR, sensor_locations: Path | None = None, **provenance) -> dict:
    """`kiln data traffic --speed-csv FILE --adjacency-csv FILE --interval-minutes M`: a T-GCN-format city as a dataset
    directory; returns its dataset.json. `header`: the speed CSV's first row names the sensors (T-GCN's files have
    one, numeric ids). The first row of speeds is `start`, each later one `interval_minutes` after it (the
    hour and day-of-week features come from these times). `zero_is_missing`: a 0 is no observation (as in SZ-taxi),
    stored as missing (imputed in input windows, left out as a target). `jobs`: SVRs fitted at once for
    --tgcn-references (default: the usable cores)."""
    for path, flag in ((speed_path, "--speed-csv"), (adj_path, "--adjacency-csv")):
        if not Path(path).is_file():
            raise KilnError(f"{flag} '{path}' not found")
    if not 1 <= interval_minutes <= 1440:
        raise KilnError(f"--interval-minutes {interval_minutes}: give the minutes between two rows of '{speed_path}' (1 to 1440)")
    try:
        times = pd.date_range(pd.Timestamp(start), periods=2, freq=f"{interval_minutes}min")
    except (ValueError, TypeError) as err:
        raise KilnError(f"--start {start!r} is not a date and time ({str(err).splitlines()[0]}); give e.g. 2012-03-01 00:00") from None
    check_new_directory(out)  # before the reading and the minutes of --tgcn-references
    sensor_ids, speed, adjacency = read_tgcn_city(Path(speed_path), Path(adj_path), unit, header, repair)
    steps, num_nodes = speed.shape
    missing = int((speed == 0).sum()) if zero_is_missing else 0
    if zero_is_missing:
        speed = np.where(speed == 0, np.nan, speed)
    times = pd.date_range(times[0], periods=steps, freq=f"{interval_minutes}min")
    column, unit_name = UNITS[unit]
    records = pd.DataFrame({
        "run_id": np.repeat((times - times[0].normalize()).days.to_numpy(), num_nodes),  # one run per day
        "timestamp": np.repeat(times.to_numpy(), num_nodes),
        "node_id": np.tile(np.arange(num_nodes), steps),
        column: speed.astype(np.float32).ravel(),
    })
    src_idx, dst_idx = np.nonzero(adjacency)
    keep = src_idx != dst_idx
    edges = pd.DataFrame({"source": src_idx[keep], "target": dst_idx[keep], "weight": adjacency[src_idx[keep], dst_idx[keep]]})
    nodes = pd.DataFrame({"node_id": np.arange(num_nodes), "sensor_id": sensor_ids})
    locations = read_sensor_locations(sensor_locations, sensor_ids) if sensor_locations else None
    if locations is not None:
        nodes["lat"], nodes["lon"] = locations["latitude"].to_numpy(), locations["longitude"].to_numpy()
    info = {"source": "tgcn-city", "speed_csv": str(Path(speed_path).resolve()), "unit": unit_name,
            "interval_minutes": int(interval_minutes), "num_nodes": int(num_nodes), "num_edges": int(len(edges)),
            "num_steps": int(steps), "start": str(times[0]), "zero_is_missing": zero_is_missing,
            "missing_readings": missing, **provenance}
    if tgcn_references:
        from kiln.recipes.traffic.references import tgcn_reference_tables

        jobs = jobs or len(os.sched_getaffinity(0))
        log(f"Fitting T-GCN's reference baselines (persistence, one linear SVR per detector and horizon, {jobs} in parallel)...")
        observed = pd.DataFrame(speed).interpolate(limit_direction="both").to_numpy()  # missing ones filled as load_series does
        info["tgcn_references"] = tgcn_reference_tables(observed, tgcn_horizons(interval_minutes), jobs=jobs, log=log)
    write_dataset(out, records, nodes, edges, info)
    zeros = f", {missing:,} zero readings stored as missing" if zero_is_missing else ""
    log(f"Wrote {out}: {num_nodes} sensors, {len(edges)} edges, {steps} {interval_minutes}-minute steps ({unit_name}){zeros}")
    return info


def convert_los_loop(src: Path, out: Path, tgcn_references: bool = False, log: Callable[[str], None] = print,
                     jobs: int | None = None) -> dict:
    """`kiln data traffic --los-loop`: T-GCN's data folder (los_speed.csv, los_adj.csv[, graph_sensor_locations.csv])
    as a dataset directory: the T-GCN-format city of 5-minute mph readings from 2012-03-01."""
    src = Path(src)
    for path in (src / "los_speed.csv", src / "los_adj.csv"):
        if not path.is_file():
            raise KilnError(f"'{path}' not found; --los-loop needs the folder with los_speed.csv and los_adj.csv ({LOS_LOOP_SOURCE})")
    return convert_tgcn_city(src / "los_speed.csv", src / "los_adj.csv", out, interval_minutes=5, unit="mph",
                             start=LOS_LOOP_START, tgcn_references=tgcn_references, log=log, jobs=jobs, header=True,
                             repair=LOS_LOOP_REPAIR, sensor_locations=src / "graph_sensor_locations.csv",
                             source="los-loop", origin=str(src.resolve()),
                             licence="MIT (T-GCN, see LICENSE.T-GCN); derived from METR-LA")
