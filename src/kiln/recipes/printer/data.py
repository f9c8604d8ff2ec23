"""Stage 1's dataset directory and stage 2: simulated layers -> windows, splits and normalisation, written once per
preparation setting.

A dataset directory (`kiln data printer --out DIR`) holds
  dataset.json        generator settings, models, layers, sample counts, the reader's skipped/malformed lines
  trajectories.npz    every simulated layer's channels (sim.CHANNELS) back to back, with offsets, models, layers
  processed/          the original guide's layout, written by the first `kiln train` that asks for these settings:
    prep.json           the preparation settings (sequence_length, stride, features, split)
    stats.json          feature and error normalisation from the training split only
    train/windows.pt    one tensor file per split: the split's feature and error streams plus window starts
    val/windows.pt
    test/windows.pt
Both the directory and processed/ are written whole or not at all (kiln.engine.files.dataset_dir).

Splits are by trajectory (one model's layer), never inside one, and by default whole models are held out for
test, so test windows come from prints the model never saw. A window is `sequence_length` consecutive samples
of one trajectory; its target is the error at its last sample (the guide's sample format), and training also
uses the errors at every step after `model.burn_in`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from kiln.engine.checkpoint import load_failure
from kiln.engine.files import dataset_dir, save_atomic, write_json
from kiln.engine.progress import track
from kiln.engine.task import Splits
from kiln.errors import KilnError
from kiln.recipes import dataset_info
from kiln.recipes.printer.config import PrinterConfig, PrinterData, PrinterGenerator
from kiln.recipes.printer.sim import CHANNELS, Printer, Trajectory, model_sources, simulate_moves

SPLITS = ("train", "val", "test")
PREP_FORMAT = 2  # bump when processed/ changes shape, so older preparations are redone
GUIDE_FEATURES = ("x_ref", "y_ref", "vx_ref", "vy_ref")  # the guide's [x_ref, y_ref, vx_ref, vy_ref]


# ---------------------------------------------------------------- stage 1: the dataset directory

def simulate_sources(settings: PrinterGenerator, log: Callable[[str], None]) -> tuple[list[Trajectory], dict[str, dict]]:
    """Read or generate every model's G-code and simulate the chosen layers; what each source gave, for dataset.json."""
    printer = Printer(settings)
    trajectories, sources = [], {}
    for name, moves in track(model_sources(settings.models, settings.model_layers), "Simulating prints", log=log):
        if name in sources:
            raise KilnError(f"two models are named '{name}'; rename one of the G-code files")
        for line, reason in moves.errors[:5]:
            log(f"Warning: {name} line {line}: {reason} (skipped)")
        if len(moves.errors) > 5:
            log(f"Warning: {name}: {len(moves.errors) - 5} more malformed lines skipped")
        layers = simulate_moves(printer, moves, name, settings.layers)
        trajectories += layers
        sources[name] = {"moves": len(moves), "layers_in_file": len(moves.layer_z), "layers_simulated": [t.layer for t in layers],
                         "samples": int(sum(len(t.time) for t in layers)), "malformed_lines": moves.errors[:100],
                         "ignored_commands": dict(moves.ignored.most_common())}
    if not trajectories:
        raise KilnError(f"no layer was simulated (layers '{settings.layers}'); choose other layers")
    return trajectories, sources


def write_trajectories(path: Path, trajectories: list[Trajectory]) -> None:
    lengths = np.array([len(t.time) for t in trajectories])
    arrays = {name: np.concatenate([t.signals[name] for t in trajectories]).astype(np.float64) for name in CHANNELS}
    np.savez_compressed(path, time=np.concatenate([t.time for t in trajectories]),
                        offsets=np.concatenate([[0], np.cumsum(lengths)]), models=np.array([t.model for t in trajectories]),
                        layers=np.array([t.layer for t in trajectories]), warmup=np.array([t.warmup for t in trajectories]),
                        **arrays)


def simulate(out: Path, settings: PrinterGenerator, log: Callable[[str], None]) -> dict[str, Any]:
    """`kiln data printer` (and a missing data.dir with data.generate): simulate, then write the dataset directory."""
    with dataset_dir(out) as tmp:  # a taken --out is refused before the simulation
        started = time.perf_counter()
        trajectories, sources = simulate_sources(settings, log)
        samples = sum(len(t.time) for t in trajectories)
        error = np.concatenate([t.error for t in trajectories])
        info = {"source": "simulated-printer", **settings.model_dump(), "models_simulated": sources,
                "num_trajectories": len(trajectories), "num_samples": int(samples),
                "error_rms_mm": float(np.sqrt((error ** 2).sum(1).mean())),
                "generation_seconds": round(time.perf_counter() - started, 3)}
        write_trajectories(tmp / "trajectories.npz", trajectories)
        write_json(tmp / "dataset.json", info)
    log(f"Wrote {out}: {len(trajectories)} layers of {len(sources)} models, {samples:,} samples at "
        f"{settings.sample_rate:g} Hz ({samples / settings.sample_rate / 60:.1f} printing minutes), error RMS "
        f"{info['error_rms_mm'] * 1000:.1f} um, in {info['generation_seconds']:.1f}s")
    return info


def load_trajectories(data_dir: Path) -> list[Trajectory]:
    path = Path(data_dir) / "trajectories.npz"
    if not path.is_file():
        raise KilnError(f"'{path}' not found; make the dataset with: kiln data printer --out {data_dir}")
    try:
        with np.load(path) as f:
            files = {k: f[k] for k in f.files}
    except Exception as err:  # numpy raises several types for a damaged archive
        raise KilnError(f"cannot read '{path}' ({str(err).splitlines()[0]}); regenerate it with kiln data printer") from None
    missing = [k for k in ("time", "offsets", "models", "layers", "warmup", *CHANNELS) if k not in files]
    if missing:
        raise KilnError(f"'{path}' lacks {', '.join(missing)}; regenerate it with kiln data printer")
    o = files["offsets"]
    return [Trajectory(str(files["models"][i]), int(files["layers"][i]), files["time"][o[i]:o[i + 1]],
                       {k: files[k][o[i]:o[i + 1]] for k in CHANNELS}, int(files["warmup"][i])) for i in range(len(o) - 1)]


# ---------------------------------------------------------------- features

def feature_names(position: bool, acceleration: bool, velocity_lags_ms: list[float]) -> list[str]:
    names = list(GUIDE_FEATURES[0 if position else 2:]) + (["ax_ref", "ay_ref"] if acceleration else [])
    for lag in velocity_lags_ms:
        names += [f"vx_lag{lag:g}ms", f"vy_lag{lag:g}ms"]
    return names


def lag_steps(lag_ms: float, rate: float) -> int:
    return max(1, int(round(lag_ms * rate / 1000)))


def stream_features(signals: dict[str, np.ndarray], rate: float, position: bool, acceleration: bool,
                    velocity_lags_ms: list[float]) -> np.ndarray:
    """[N, F] features of one trajectory, each computable sample by sample from the reference alone (the streaming
    predictor computes them the same way): acceleration as the backward difference of the velocity, lagged
    velocities from the history (the first sample's value before the trajectory began)."""
    v = np.stack([signals["vx_ref"], signals["vy_ref"]], 1)
    columns = ([signals["x_ref"][:, None], signals["y_ref"][:, None]] if position else []) + [v]
    if acceleration:
        columns.append(np.diff(v, axis=0, prepend=v[:1]) * rate)
    for lag in velocity_lags_ms:
        k = lag_steps(lag, rate)
        columns.append(np.concatenate([np.repeat(v[:1], min(k, len(v)), 0), v[:-k]])[:len(v)])
    return np.concatenate(columns, 1).astype(np.float32)


# ---------------------------------------------------------------- splits and windows

def assign_splits(trajectories: list[Trajectory], test_models: list[str], val_ratio: float, test_ratio: float,
                  seed: int) -> dict[str, list[int]]:
    """Trajectory indices per split: whole test models held out (or test_ratio of the layers), then val_ratio of
    the remaining layers, shuffled with `seed`. Every split gets at least one trajectory."""
    models = sorted({t.model for t in trajectories})
    unknown = [m for m in test_models if m not in models]
    if unknown:
        raise KilnError(f"data.test_models names {unknown[0]!r}, which this dataset does not have; it has {', '.join(models)}")
    if len(trajectories) < 3:
        raise KilnError(f"the dataset has {len(trajectories)} simulated layer(s); train/val/test need at least 3 "
                        "(simulate more layers, e.g. --layers all)")
    rng = np.random.default_rng(seed)
    index = np.arange(len(trajectories))
    held = np.array([t.model in test_models for t in trajectories])
    if test_models:
        if held.all():
            raise KilnError("data.test_models holds out every model; leave at least one for training")
        test, rest = index[held], rng.permutation(index[~held])
    else:
        order = rng.permutation(index)
        n_test = max(1, int(round(test_ratio * len(order))))
        test, rest = order[:n_test], order[n_test:]
    n_val = min(max(1, int(round(val_ratio * len(rest)))), len(rest) - 1)
    if n_val < 1:
        raise KilnError("too few layers outside the test split for train and val; simulate more layers")
    return {"train": sorted(rest[n_val:].tolist()), "val": sorted(rest[:n_val].tolist()), "test": sorted(test.tolist())}


def build_split(trajectories: list[Trajectory], ids: list[int], rate: float, sequence_length: int, stride: int,
                position: bool, acceleration: bool, velocity_lags_ms: list[float]) -> dict[str, Any]:
    """One split's streams and windows: features [T, F], errors [T, 2], reference positions [T, 2] (for plots),
    starts [N] (window = starts..+L),
    trajectory [N] (index into `ids`), plus each trajectory's model, layer and offset."""
    features, errors, positions, starts, owner, offsets = [], [], [], [], [], [0]
    for j, i in enumerate(ids):
        t = trajectories[i]
        features.append(stream_features(t.signals, rate, position, acceleration, velocity_lags_ms))
        errors.append(t.error.astype(np.float32))
        positions.append(np.stack([t.signals["x_ref"], t.signals["y_ref"]], 1).astype(np.float32))
        # windows end inside the layer (after its warm-up), so every target is a sample of this layer
        local = np.arange(max(t.warmup - sequence_length + 1, 0), len(t.time) - sequence_length + 1, stride)
        starts.append(offsets[-1] + local)
        owner.append(np.full(len(local), j))
        offsets.append(offsets[-1] + len(t.time))
    return {"features": torch.from_numpy(np.concatenate(features)), "errors": torch.from_numpy(np.concatenate(errors)),
            "positions": torch.from_numpy(np.concatenate(positions)),
            "starts": torch.from_numpy(np.concatenate(starts)).long(), "trajectory": torch.from_numpy(np.concatenate(owner)).long(),
            "offsets": torch.tensor(offsets), "models": [trajectories[i].model for i in ids],
            "layers": [trajectories[i].layer for i in ids], "warmup": [trajectories[i].warmup for i in ids],
            "sequence_length": sequence_length}


def normalisation(train: dict[str, Any], names: list[str]) -> dict[str, Any]:
    mean, std = train["features"].double().mean(0), train["features"].double().std(0)
    return {"feature_names": names, "feature_mean": mean.tolist(), "feature_std": std.clamp_min(1e-6).tolist(),
            "error_mean": train["errors"].double().mean(0).tolist(), "error_std": train["errors"].double().std(0).clamp_min(1e-9).tolist(),
            "unit": "mm"}


def preparation_settings(data: PrinterData) -> dict[str, Any]:
    """What processed/ depends on (its prep.json): a config that changes any of these prepares again."""
    return {"format": PREP_FORMAT, "sequence_length": data.sequence_length, "stride": data.stride, "position": data.position,
            "acceleration": data.acceleration, "velocity_lags_ms": list(data.velocity_lags_ms),
            "test_models": list(data.test_models), "val_ratio": data.val_ratio, "test_ratio": data.test_ratio,
            "split_seed": data.split_seed}


def write_processed(processed: Path, splits: dict[str, dict[str, Any]], stats: dict[str, Any], settings: dict[str, Any],
                    log: Callable[[str], None]) -> None:
    shutil.rmtree(processed, ignore_errors=True)  # a preparation for other settings; dataset_dir writes only a new one
    with dataset_dir(processed, "data.dir") as tmp:
        for name, split in splits.items():
            save_atomic(split, tmp / name / "windows.pt")
            log(f"Split {name}: {len(split['models'])} layers of {', '.join(sorted(set(split['models'])))}; "
                f"{len(split['starts']):,} windows from {len(split['features']):,} samples")
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "prep.json", settings)


def prepare(data_dir: Path, data: PrinterData, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write processed/ for these preparation settings (kept if it already matches); returns stats.json's content."""
    data_dir = Path(data_dir)
    info = dataset_info(data_dir, "printer", f"kiln data printer --out {data_dir}")
    settings = preparation_settings(data)
    processed = data_dir / "processed"
    if (processed / "prep.json").is_file() and json.loads((processed / "prep.json").read_text()) == settings:
        return json.loads((processed / "stats.json").read_text())
    rate = float(info.get("sample_rate", 1000.0))
    trajectories = load_trajectories(data_dir)
    ids = assign_splits(trajectories, data.test_models, data.val_ratio, data.test_ratio, data.split_seed)
    names = feature_names(data.position, data.acceleration, data.velocity_lags_ms)
    splits = {name: build_split(trajectories, ids[name], rate, data.sequence_length, data.stride, data.position,
                                data.acceleration, data.velocity_lags_ms) for name in SPLITS}
    for name, split in splits.items():
        if len(split["starts"]) == 0:
            raise KilnError(f"the {name} split has no window of data.sequence_length={data.sequence_length} samples; "
                            "use shorter windows or more layers")
    stats = {**normalisation(splits["train"], names), "sample_rate": rate}
    write_processed(processed, splits, stats, settings, log)
    return stats


def read_split(split_dir: Path) -> dict[str, Any]:
    path = Path(split_dir) / "windows.pt"
    if not path.is_file():
        raise KilnError(f"'{path}' not found; prepare the data by training a config on its dataset (kiln train CONFIG)")
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a truncated file, or a pickle weights_only refuses (nothing in it ran)
        raise KilnError(f"cannot read '{path}' ({load_failure(err)[1]}); delete {path.parent.parent} to prepare it again") from None


def gather_windows(split: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Raw windows: features [N, L, F] and errors [N, L, 2] (mm)."""
    index = split["starts"][:, None] + torch.arange(split["sequence_length"])
    return split["features"][index], split["errors"][index]


def window_tensors(split: dict[str, Any], stats: dict[str, Any]) -> dict[str, Tensor]:
    """What training batches hold: `input_features` [N, L, F] normalised, `targets` [N, 2] the last step's error in
    mm (the guide's sample), `error_sequence` [N, L, 2] every step's error in mm."""
    features, errors = gather_windows(split)
    mean, std = torch.tensor(stats["feature_mean"]), torch.tensor(stats["feature_std"])
    return {"input_features": ((features - mean) / std).float(), "targets": errors[:, -1].contiguous(), "error_sequence": errors}


def load_data(cfg: PrinterConfig, log: Callable[[str], None] = print) -> Splits:
    """Stage 2: windows and splits of the simulated layers (prepared once per setting into processed/)."""
    data_dir = Path(cfg.data.dir)
    stats = prepare(data_dir, cfg.data, log)
    splits = {name: window_tensors(read_split(data_dir / "processed" / name), stats) for name in SPLITS}
    return Splits(**splits, info=stats)


class RealTimeDataset(torch.utils.data.Dataset):
    """The guide's dataset: RealTimeDataset('DIR/processed/train')[i] -> {'features': [L, F] normalised,
    'target': [2] error (mm) at the window's last sample, 'metadata': {'model', 'layer', 'start'}}."""

    def __init__(self, split_dir: str | Path):
        split_dir = Path(split_dir)
        self.split = read_split(split_dir)
        stats_path = split_dir.parent / "stats.json"
        if not stats_path.is_file():
            raise KilnError(f"'{stats_path}' not found next to the split folder '{split_dir}'")
        stats = json.loads(stats_path.read_text())
        self.mean, self.std = torch.tensor(stats["feature_mean"]), torch.tensor(stats["feature_std"])
        self.length = self.split["sequence_length"]

    def __len__(self) -> int:
        return len(self.split["starts"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        start = int(self.split["starts"][i])
        owner = int(self.split["trajectory"][i])
        window = self.split["features"][start:start + self.length]
        return {"features": (window - self.mean) / self.std, "target": self.split["errors"][start + self.length - 1],
                "metadata": {"model": self.split["models"][owner], "layer": self.split["layers"][owner],
                             "start": start - int(self.split["offsets"][owner])}}
