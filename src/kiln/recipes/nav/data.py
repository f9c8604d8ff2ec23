"""Nav dataset directories: labelled train/val/test splits of grids, written by `kiln data nav` and read into tensors.

A sample is a square grid (1 = wall, 0 = free), a start cell and a goal cell. Its labels are the BFS distance of
every cell to the goal, the set of optimal actions at every cell, and a single tie-broken action at the start
(array conventions in grid.py). A directory holds train.npz, val.npz, test.npz (keys SPLIT_KEYS), optionally
eval/<layout>_<side>.npz (held-out sets at their own sizes), and dataset.json.
"""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path
from tokenize import TokenError
from typing import TYPE_CHECKING, Callable

import numpy as np

from kiln.engine.files import dataset_dir, write_json
from kiln.engine.progress import track
from kiln.errors import KilnError
from kiln.recipes import dataset_info
from kiln.recipes.nav.grid import (NUM_SYMMETRIES, bfs_distance_field, canonical_grid_ids, multi_optimal_fraction,
                                   optimal_action_sets, single_action_labels, transform_grid, transform_optimal,
                                   transform_positions)
from kiln.recipes.nav.layouts import draw_layout, parse_layouts
from kiln.recipes.nav.movingai import read_map_folder

if TYPE_CHECKING:
    from torch import Tensor

    from kiln.engine.task import Splits
    from kiln.recipes.nav.config import NavConfig, NavGenerator

SPLITS = ("train", "val", "test")
SPLIT_KEYS = ("grids", "starts", "goals", "dist", "optimal", "action")
FORMAT_VERSION = 1


# -----------------------------------------------------------------------------
# labelled samples


def label_samples(grids, starts, goals):
    """A split dict with BFS distances, optimal sets and single action labels filled in."""
    dist = bfs_distance_field(grids, goals)
    optimal = optimal_action_sets(grids, dist, goals)
    action = single_action_labels(optimal, starts)
    return dict(grids=grids, starts=starts, goals=goals, dist=dist, optimal=optimal, action=action)


def augment_split(split):
    """All 8 symmetries of every sample, stacked along rows (identity block first): 8x the rows."""
    size = split["grids"].shape[1]
    blocks = {key: [] for key in SPLIT_KEYS}
    for k in range(NUM_SYMMETRIES):
        starts = transform_positions(split["starts"], k, size)
        optimal = transform_optimal(split["optimal"], k)
        blocks["grids"].append(transform_grid(split["grids"], k))
        blocks["starts"].append(starts)
        blocks["goals"].append(transform_positions(split["goals"], k, size))
        blocks["dist"].append(transform_grid(split["dist"], k))
        blocks["optimal"].append(optimal)
        # recomputed: the up/down/left/right tie-break order is not symmetric
        blocks["action"].append(single_action_labels(optimal, starts))
    return {key: np.concatenate(parts) for key, parts in blocks.items()}


def distinct_samples(total, draw, with_goal=False):
    """`total` samples from `draw(n) -> (grids, starts, goals)` whose grids (with their goal if `with_goal`)
    are pairwise distinct even up to symmetry, in draw order."""
    grids = starts = goals = None
    for _ in range(20):
        # draw some extra, since duplicates (up to symmetry) are dropped
        have = 0 if grids is None else grids.shape[0]
        new = draw(max(total - have, 0) + total // 20 + 16)
        grids, starts, goals = new if grids is None else (np.concatenate([a, b]) for a, b in zip((grids, starts, goals), new))
        # keep the first sample of each symmetry class
        _, first = np.unique(canonical_grid_ids(grids, goals if with_goal else None), return_index=True)
        first.sort()
        grids, starts, goals = grids[first], starts[first], goals[first]
        if grids.shape[0] >= total:
            return grids[:total], starts[:total], goals[:total]
    raise RuntimeError(f"could not find {total} grids{' and goals' if with_goal else ''} distinct up to symmetry "
                       f"({grids.shape[1]}x{grids.shape[2]}); ask for fewer or larger grids")


def _pad_with_walls(grids, starts, goals, frame, rng):
    """Place each side-s grid at a random spot of a frame x frame grid of walls (walls outside are the
    same to a policy as the edge of the map), so grids of several sides share one array."""
    num, side = grids.shape[0], grids.shape[1]
    if side == frame:
        return grids, starts, goals
    offsets = rng.integers(0, frame - side + 1, size=(num, 2))
    rows = offsets[:, 0, None, None] + np.arange(side)[None, :, None]
    cols = offsets[:, 1, None, None] + np.arange(side)[None, None, :]
    framed = np.ones((num, frame, frame), dtype=np.uint8)
    framed[np.arange(num)[:, None, None], rows, cols] = grids
    return framed, starts + offsets, goals + offsets


def _group_counts(counts, groups, weights, rng):
    """How many samples of each (layout, side) group each split gets: {split: [count per group]}."""
    if len(groups) == 1:
        return {name: [count] for name, count in counts.items()}
    return {name: rng.multinomial(count, weights).tolist() for name, count in counts.items()}


def _concat_shuffled(parts, rng):
    """One split from several groups' labelled parts, rows shuffled so that a batch mixes the groups."""
    joined = {key: np.concatenate([part[key] for part in parts]) for key in SPLIT_KEYS}
    if len(parts) == 1:
        return joined
    order = rng.permutation(joined["grids"].shape[0])
    return {key: arr[order] for key, arr in joined.items()}



# -----------------------------------------------------------------------------
# datasets on disk


def draw_splits(counts, *, grid_size, min_grid_size, layout, obstacle_density, eval_sizes, eval_grids, rng):
    """Labelled splits with `counts` = {split: samples}, and the held-out sets {"<layout>_<side>": split}.

    Samples are distinct up to symmetry across all splits within each (layout, side) group; a grid of a smaller
    side is padded with walls to grid_size, a held-out set keeps its own side.
    """
    layouts, maps_dir = parse_layouts(layout)
    maps = read_map_folder(maps_dir) if maps_dir else None
    sides = list(range(min_grid_size or grid_size, grid_size + 1))
    groups = [(name, side) for name in layouts for side in sides]
    weights = [layouts[name] / len(sides) for name, _ in groups]
    per_group = _group_counts(counts, groups, weights, rng)
    eval_groups = [(name, side) for name in layouts for side in sorted(set(eval_sizes))]
    parts = {name: [] for name in SPLITS}
    evals = {}
    for group in track(list(dict.fromkeys(groups + eval_groups)), "Drawing and labelling grids"):  # in order, no repeats
        name, side = group
        split_counts = [per_group[split][groups.index(group)] if group in groups else 0 for split in SPLITS]
        num_eval = eval_grids if group in eval_groups else 0
        # random walls are drawn from 2^(side^2) patterns, so whole grids are kept distinct; a maze or a
        # floor of rooms has few wall patterns at small sides, so there the grid and its goal together are
        grids, starts, goals = distinct_samples(sum(split_counts) + num_eval,
                                                lambda n: draw_layout(name, n, side, obstacle_density, rng, maps),
                                                with_goal=name != "random")
        bounds = np.cumsum([0] + split_counts)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
            parts[split].append(label_samples(*_pad_with_walls(grids[lo:hi], starts[lo:hi], goals[lo:hi], grid_size, rng)))
        if num_eval:
            evals[f"{name}_{side}"] = label_samples(grids[bounds[-1]:], starts[bounds[-1]:], goals[bounds[-1]:])
    return {split: _concat_shuffled(parts[split], rng) for split in SPLITS}, evals


def write_dataset(out: Path, splits: dict, evals: dict, info: dict) -> None:
    for name, split in splits.items():
        np.savez(out / f"{name}.npz", **split)
    if evals:
        (out / "eval").mkdir()
        for key, group in evals.items():
            np.savez(out / "eval" / f"{key}.npz", **group)
    write_json(out / "dataset.json", info)


def generate_dataset(
    out_dir,
    *,
    num_train,
    num_val,
    num_test,
    grid_size=8,
    obstacle_density=0.25,
    augment=False,
    seed=0,
    layout="random",
    min_grid_size=None,
    eval_sizes=(),
    eval_grids=200,
):
    """Write train/val/test .npz files plus dataset.json into out_dir, whole or not at all; return the json dict.

    `layout` is one layout or a weighted mix (layouts.parse_layouts); with `min_grid_size` every sample's side
    is drawn uniformly from min_grid_size..grid_size and smaller grids are padded with walls to grid_size.
    Samples are distinct up to symmetry across all splits within each (layout, side) group, so no test grid
    (nor any rotation or reflection of it) is seen in training; for mazes, rooms and map windows, which have
    few wall patterns at small sides, a grid counts with its goal. Only train is augmented, after splitting.
    `eval_sizes` adds held-out sets of `eval_grids` grids per layout and side at their own size (eval/*.npz),
    for the per-layout, per-size table of `kiln evaluate`.
    """
    with dataset_dir(Path(out_dir)) as tmp:  # a taken out_dir is refused before any grid is drawn
        start_time = time.perf_counter()
        rng = np.random.default_rng(seed)
        splits, evals = draw_splits({"train": num_train, "val": num_val, "test": num_test}, grid_size=grid_size,
                                    min_grid_size=min_grid_size, layout=layout, obstacle_density=obstacle_density,
                                    eval_sizes=eval_sizes, eval_grids=eval_grids, rng=rng)
        # over the drawn grids, before augmentation repeats each of them 8 times
        multi_optimal = multi_optimal_fraction(np.concatenate([s["dist"] for s in splits.values()]),
                                               np.concatenate([s["optimal"] for s in splits.values()]))
        if augment:
            splits["train"] = augment_split(splits["train"])
        info = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "grid_size": grid_size,
            "min_grid_size": min_grid_size,
            "layout": layout,
            "obstacle_density": obstacle_density,
            "augment": augment,
            "num_train_base": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "counts": {name: int(split["grids"].shape[0]) for name, split in splits.items()},
            "shapes": {name: {key: list(arr.shape) for key, arr in split.items()} for name, split in splits.items()},
            "eval_sizes": sorted(set(eval_sizes)),
            "eval_grids": eval_grids,
            "eval_groups": {key: int(group["grids"].shape[0]) for key, group in evals.items()},
            "multi_optimal_fraction": multi_optimal,
            "generation_seconds": time.perf_counter() - start_time,
        }
        write_dataset(tmp, splits, evals, info)
    return info


def generate(out: Path, settings: NavGenerator, log: Callable[[str], None]) -> dict:
    """`kiln data nav` (and `kiln train` on a missing data.dir): write the dataset and say what it holds."""
    try:
        info = generate_dataset(out, **settings.model_dump())
    except (RuntimeError, ValueError) as err:  # too few distinct grids at this size; an unreadable maps folder
        raise KilnError(f"kiln data nav: {err}") from None
    counts = info["counts"]
    sides = f"{settings.min_grid_size}..{settings.grid_size}" if settings.min_grid_size else str(settings.grid_size)
    log(f"Wrote {out}: {counts['train']} train{' (8 symmetries each)' if settings.augment else ''}, {counts['val']} val, "
        f"{counts['test']} test {settings.layout} grids of side {sides} in {info['generation_seconds']:.1f}s; "
        f"{info['multi_optimal_fraction']:.0%} of cells have more than one optimal action")
    if info["eval_groups"]:
        log(f"Held-out sets in {out / 'eval'}: " + ", ".join(f"{key} ({n})" for key, n in info["eval_groups"].items()))
    return info


# -----------------------------------------------------------------------------
# reading a dataset


def load_split(data_dir, split):
    """Arrays of one split written by generate_dataset, as a dict keyed like SPLIT_KEYS. A file that is not such an
    archive (truncated, foreign, of the wrong shapes or values) is a ValueError naming it and what is wrong."""
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise ValueError(f"{path}: split file not found")
    try:
        npz = np.load(path)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: one array, not an .npz archive of a split")
        with npz:
            missing = [key for key in SPLIT_KEYS if key not in npz.files]
            if missing:
                raise ValueError(f"{path}: missing keys {missing}")
            arrays = {key: npz[key] for key in SPLIT_KEYS}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError, TokenError) as err:  # the last two: a damaged .npy header
        raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
    check_split(path, arrays)
    return arrays


def check_split(path, arrays):
    """The shapes, integer dtypes and value ranges of a split's arrays (see grid.py's conventions)."""
    grids = arrays["grids"]
    if grids.ndim != 3 or grids.shape[1] != grids.shape[2] or 0 in grids.shape:
        raise ValueError(f"{path}: 'grids' has shape {list(grids.shape)}, not [N, G, G]")
    n, side = grids.shape[:2]
    shapes = {"starts": [n, 2], "goals": [n, 2], "dist": [n, side, side], "optimal": [n, side, side, 5], "action": [n]}
    ranges = {"grids": (0, 1), "starts": (0, side - 1), "goals": (0, side - 1), "dist": (-1, side * side - 1),
              "action": (0, 4)}
    for key in SPLIT_KEYS:
        value = arrays[key]
        if key in shapes and list(value.shape) != shapes[key]:
            raise ValueError(f"{path}: '{key}' has shape {list(value.shape)}, expected {shapes[key]}")
        if not (np.issubdtype(value.dtype, np.integer) or value.dtype == bool):
            raise ValueError(f"{path}: '{key}' holds {value.dtype}, not integers")
        if key in ranges:
            lo, hi = ranges[key]
            if value.min() < lo or value.max() > hi:
                raise ValueError(f"{path}: '{key}' holds values {value.min()}..{value.max()}, expected {lo}..{hi}")


def check_sides(data_dir, info, arrays):
    """Every split has the grid side dataset.json gives."""
    sides = {name: split["grids"].shape[1] for name, split in arrays.items()}
    if len(set(sides.values())) > 1:
        raise ValueError(f"{data_dir}: the splits hold grids of side "
                         + ", ".join(f"{side} ({name})" for name, side in sides.items()))
    side = next(iter(sides.values()))
    grid_size = info.get("grid_size")
    if type(grid_size) is not int or grid_size != side:
        raise ValueError(f"'{Path(data_dir) / 'dataset.json'}' says grid_size {grid_size!r} but the splits hold grids "
                         f"of side {side}")


def to_tensors(split: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Arrays of load_split -> the tensors a batch carries (cells: 0 free, 1 wall, 2 goal)."""
    import torch  # `kiln data nav` writes datasets without torch

    cells = split["grids"].astype(np.uint8)  # 1 = wall
    n = len(cells)
    cells[np.arange(n), split["goals"][:, 0], split["goals"][:, 1]] = 2
    return {
        "cells": torch.from_numpy(cells),
        "optimal": torch.from_numpy(split["optimal"].reshape(n, -1, 5).astype(bool)),
        "starts": torch.from_numpy(split["starts"].astype(np.int64)),
        "goals": torch.from_numpy(split["goals"].astype(np.int64)),
        "dist": torch.from_numpy(split["dist"].astype(np.int64)),
        "action": torch.from_numpy(split["action"].astype(np.int64)),
    }


def load_data(cfg: NavConfig, log: Callable[[str], None] = print) -> Splits:
    from kiln.engine.task import Splits

    data_dir = Path(cfg.data.dir)
    info = dataset_info(data_dir, "nav", "kiln data nav --out DIR")
    try:
        arrays = {name: load_split(data_dir, name) for name in SPLITS}
        check_sides(data_dir, info, arrays)
    except ValueError as err:
        raise KilnError(f"{err}; regenerate the dataset with kiln data nav --out {data_dir}") from None
    splits = {name: to_tensors(split) for name, split in arrays.items()}
    return Splits(**splits, info={**info, "num_train": len(splits["train"]["cells"])})
