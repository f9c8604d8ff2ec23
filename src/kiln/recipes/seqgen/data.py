"""Seqgen datasets: a directory of CSV files, one sequence each, as the original guide's sample pipeline writes them.

Each file holds 151 rows (one per step) with the columns

    step, pc1, pc2, pc3, pc4, pc5, param1, param2

(5 principal-component scores of the simulated profile at that step, and the sequence's 2 parameters,
repeated on every row). Files are read in name order, validated (row count, columns, NaN, parameters
constant within a file) and split into train / val / test by a seeded shuffle (the guide: 4400 / 550 /
the rest). `kiln data seqgen --synthetic` also writes dataset.json (provenance) and pca.npz (the PCA fitted
on the training split only). Components and parameters are z-scored with training-split statistics,
which travel with the model (best_model.pt's data_info).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from kiln.engine.files import dataset_dir, write_json
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.engine.task import Splits
    from kiln.recipes.seqgen.config import SeqgenConfig, SyntheticStrings

STEPS = 151
COMPONENTS = [f"pc{k}" for k in range(1, 6)]
PARAMS = ["param1", "param2"]
COLUMNS = ["step", *COMPONENTS, *PARAMS]


class BadFile(Exception):
    """One CSV that does not follow the format (the message says why)."""


def split_indices(count: int, train_size: int, val_size: int, seed: int) -> dict[str, np.ndarray]:
    """Positions of the train / val / test sequences among `count` files in name order (a seeded shuffle)."""
    if count < train_size + val_size + 1:
        raise KilnError(f"{count} sequences cannot make {train_size} train + {val_size} val + at least 1 test; "
                        f"lower data.split.train_size / data.split.val_size or add sequences")
    order = np.random.default_rng(seed).permutation(count)
    return {"train": np.sort(order[:train_size]), "val": np.sort(order[train_size:train_size + val_size]),
            "test": np.sort(order[train_size + val_size:])}


# ---------------------------------------------------------------- reading

def read_sequence(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file -> (components [151, 5], parameters [2]); BadFile says what is wrong with it."""
    try:
        frame = pd.read_csv(path, dtype=str)  # text, so a 400-digit integer becomes inf below, not an OverflowError
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BadFile(f"not a readable CSV ({str(err).strip().splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BadFile(f"lacks column(s) {', '.join(missing)} (has {list(frame.columns)})")
    if len(frame) != STEPS:
        raise BadFile(f"has {len(frame)} rows, expected {STEPS}")
    values = pd.to_numeric(frame[COLUMNS].to_numpy().ravel(), errors="coerce").reshape(-1, len(COLUMNS)).astype(np.float64)
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise BadFile(f"has a NaN, infinite or non-numeric value (row {row + 1}, column {COLUMNS[col]})")
    if (np.abs(values) > np.finfo(np.float32).max).any():  # the model's float32 would make it inf
        row, col = np.argwhere(np.abs(values) > np.finfo(np.float32).max)[0]
        raise BadFile(f"has {values[row, col]:g} (row {row + 1}, column {COLUMNS[col]}), beyond float32's ±3.4e+38")
    params = values[:, -2:]
    if not np.allclose(params, params[0], rtol=1e-6, atol=1e-9):
        raise BadFile("has parameters that change between rows; param1 and param2 must be constant within a sequence")
    return values[:, 1:6], params[0]


def read_sequences(data_dir: Path, on_bad_file: str, log: Callable[[str], None]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every *.csv in data_dir (name order) -> (file names, parameters [N, 2], components [N, 151, 5])."""
    data_dir = Path(data_dir)
    files = sorted(data_dir.glob("*.csv"))
    if not files:
        raise KilnError(f"'{data_dir}' holds no .csv files; make a dataset with: kiln data seqgen --synthetic --out {data_dir}")
    names, params, sequences, skipped = [], [], [], []
    for path in files:
        try:
            seq, par = read_sequence(path)
        except BadFile as err:
            if on_bad_file == "error":
                raise KilnError(f"'{path}' {err}; fix or remove it, or set data.on_bad_file=skip to leave such files out") from None
            skipped.append(f"{path.name} {err}")
            continue
        names.append(path.name)
        params.append(par)
        sequences.append(seq)
    for line in skipped[:10]:
        log(f"Warning: skipped {line}")
    if len(skipped) > 10:
        log(f"Warning: skipped {len(skipped) - 10} more bad files")
    if not names:
        raise KilnError(f"no valid sequence in '{data_dir}' ({len(skipped)} bad files)")
    log(f"Read {len(names)} sequences from {data_dir}" + (f" ({len(skipped)} bad files skipped)" if skipped else ""))
    return names, np.stack(params), np.stack(sequences)


# ---------------------------------------------------------------- writing (kiln data seqgen --synthetic)

def write_sequences(out: Path, params: np.ndarray, components: np.ndarray) -> None:
    """One CSV per sequence, seq_00000.csv ... (name order is the sequence order)."""
    steps = np.arange(components.shape[1], dtype=np.float64)[:, None]
    width = len(str(len(params) - 1))
    for k, (par, seq) in enumerate(zip(params, components)):
        rows = np.hstack([steps, seq, np.broadcast_to(par, (len(seq), 2))])
        np.savetxt(out / f"seq_{k:0{max(width, 5)}d}.csv", rows, delimiter=",", header=",".join(COLUMNS),
                   comments="", fmt=["%d"] + ["%.8g"] * 7)


def generate_dataset(out: Path, settings: SyntheticStrings, log: Callable[[str], None]) -> dict:
    """`kiln data seqgen --synthetic`: simulate the string for settings.num_sequences parameter pairs, fit a
    5-component PCA on the training split's profiles only, and write the CSV files, pca.npz and dataset.json."""
    from kiln.recipes.seqgen.sim import PARAM_RANGES, draw_parameters, fit_pca, project, string_profiles

    s = settings
    with dataset_dir(out) as tmp:  # a taken --out is refused before the simulation
        started = time.perf_counter()
        params = draw_parameters(s.num_sequences, s.seed)
        profiles = string_profiles(params, s.profile_points)
        train = split_indices(s.num_sequences, s.train_size, s.val_size, s.split_seed)["train"]
        pca = fit_pca(profiles[train], len(COMPONENTS))
        write_sequences(tmp, params, project(profiles, pca))
        np.savez(tmp / "pca.npz", **pca)
        info = {"source": "synthetic-string", "num_sequences": s.num_sequences, "profile_points": s.profile_points,
                "seed": s.seed, "steps": STEPS, "parameters": {"param1": "wave speed", "param2": "damping"},
                "parameter_ranges": {f"param{k + 1}": list(r) for k, r in enumerate(PARAM_RANGES.values())},
                "pca_fit_split": {"train_size": s.train_size, "val_size": s.val_size, "split_seed": s.split_seed},
                "pca_explained_variance_ratio": [round(float(v), 6) for v in pca["explained_variance_ratio"]],
                "generation_seconds": round(time.perf_counter() - started, 3)}
        write_json(tmp / "dataset.json", info)
    log(f"Wrote {out}: {s.num_sequences} sequences of a plucked damped string ({s.profile_points}-point profile -> "
        f"{len(COMPONENTS)} PCA components, fitted on the {s.train_size} training sequences: "
        f"{sum(info['pca_explained_variance_ratio']):.4%} of the variance) in {info['generation_seconds']:.1f}s")
    return info


# ---------------------------------------------------------------- splits in memory

def build_splits(params: np.ndarray, components: np.ndarray, split: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """z-scored arrays per split ({"params": [S, 2], "y": [S, 151, 5]}) and the training statistics."""
    train = split["train"]
    stats = {"y_mean": components[train].mean((0, 1)).tolist(), "y_std": np.maximum(components[train].std((0, 1)), 1e-12).tolist(),
             "param_mean": params[train].mean(0).tolist(), "param_std": np.maximum(params[train].std(0), 1e-12).tolist()}
    y = (components - np.array(stats["y_mean"])) / np.array(stats["y_std"])
    p = (params - np.array(stats["param_mean"])) / np.array(stats["param_std"])
    arrays = {name: {"params": p[idx].astype(np.float32), "y": y[idx].astype(np.float32)} for name, idx in split.items()}
    return arrays, stats


def load_data(cfg: SeqgenConfig, log: Callable[[str], None] = print) -> Splits:
    """data.dir -> in-memory Splits of z-scored tensors; info carries the statistics and the test files' names."""
    import torch

    from kiln.engine.task import Splits
    from kiln.recipes import dataset_info

    names, params, components = read_sequences(Path(cfg.data.dir), cfg.data.on_bad_file, log)
    s = cfg.data.split
    split = split_indices(len(names), s.train_size, s.val_size, s.split_seed)
    arrays, stats = build_splits(params, components, split)
    log(f"Split {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test sequences (seed {s.split_seed})")
    info = {**stats, "dataset": dataset_info(cfg.data.dir), "test_files": [names[i] for i in split["test"]]}
    tensors = {name: {k: torch.from_numpy(v) for k, v in split_arrays.items()} for name, split_arrays in arrays.items()}
    return Splits(**tensors, info=info)
