"""Grid-navigation dataset: random obstacle grids, BFS distance fields and optimal action sets.

A sample is a square grid (1 = wall, 0 = free), a start cell and a goal cell. Its labels are
the BFS distance of every cell to the goal, the set of optimal actions at every cell, and a
single tie-broken action at the start. Everything is numpy only and vectorised over whole
batches of grids; the only Python loops run over BFS wavefront steps or the 8 symmetries.

Conventions (other code depends on them):
    grids    uint8 [N, G, G]     1 = wall, 0 = free
    starts   int64 [N, 2]        (row, col); goals likewise
    dist     int16 [N, G, G]     steps to the goal, -1 for walls and cells that cannot reach it
    optimal  bool  [N, G, G, 5]  optimal action set per cell, actions indexed as ACTIONS
    action   int64 [N]           first optimal action at the start in order up, down, left, right
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ACTIONS = ("up", "down", "left", "right", "stay")
ACTION_DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]])  # (row, col) per action
STAY = 4
NUM_SYMMETRIES = 8
SPLITS = ("train", "val", "test")
SPLIT_KEYS = ("grids", "starts", "goals", "dist", "optimal", "action")
FORMAT_VERSION = 1
CHUNK_CELLS = 1 << 18  # cells per batch in the heavy loops: small enough to stay in cache


# -----------------------------------------------------------------------------
# BFS distance field and optimal actions


def bfs_distance_field(grids, goals):
    """BFS steps from every cell to its grid's goal, -1 where unreachable; int16 [N, H, W]."""
    num_grids, height, width = grids.shape
    # a few hundred thousand cells at a time keeps the working arrays in cache
    chunk = max(1, CHUNK_CELLS // (height * width))
    if num_grids > chunk:
        parts = [bfs_distance_field(grids[i : i + chunk], goals[i : i + chunk]) for i in range(0, num_grids, chunk)]
        return np.concatenate(parts)
    # give every grid one extra wall column and wall row, and lay the whole batch out as one flat
    # array: a cell's 4 neighbours sit at offsets -1, +1, -stride, +stride, and the walls stop
    # any move from wrapping onto the next row or the next grid
    stride = width + 1
    free = np.zeros((num_grids, height + 1, stride), dtype=bool)
    free[:, :height, :width] = grids == 0
    free = free.reshape(-1)
    goal_index = (np.arange(num_grids) * (height + 1) + goals[:, 0]) * stride + goals[:, 1]
    frontier = np.zeros_like(free)
    frontier[goal_index] = free[goal_index]  # a goal on a wall reaches nothing
    unreached = free & ~frontier
    # a cell at distance d is unreached during exactly d iterations, so counting those gives
    # its distance (much cheaper than scattering the step number into the frontier cells)
    dist = np.zeros(free.shape, dtype=np.int16)
    num_steps = 0
    # one iteration per wavefront: all grids advance together until every frontier is empty
    while frontier.any():
        if num_steps == np.iinfo(np.int16).max:
            raise OverflowError("BFS distances do not fit in int16")
        dist += unreached
        neighbours = np.zeros_like(frontier)
        neighbours[1:] |= frontier[:-1]
        neighbours[:-1] |= frontier[1:]
        neighbours[stride:] |= frontier[:-stride]
        neighbours[:-stride] |= frontier[stride:]
        frontier = neighbours & unreached
        unreached ^= frontier
        num_steps += 1
    dist[~free | unreached] = -1
    return dist.reshape(num_grids, height + 1, stride)[:, :height, :width].copy()


def optimal_action_sets(grids, dist, goals):
    """Bool [N, H, W, 5]: move a is optimal iff it lands in bounds on a free cell one step closer."""
    num_grids, height, width = grids.shape
    # pad with -1 so out-of-bounds neighbours look like walls
    padded = np.pad(dist, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    moving = dist > 0  # excludes walls, unreachable cells and the goal (whose dist - 1 = -1 would match walls)
    optimal = np.zeros(grids.shape + (len(ACTIONS),), dtype=bool)
    for a, (drow, dcol) in enumerate(ACTION_DELTAS[:STAY]):
        neighbour_dist = padded[:, 1 + drow : 1 + drow + height, 1 + dcol : 1 + dcol + width]
        optimal[..., a] = moving & (neighbour_dist == dist - 1)
    optimal[np.arange(num_grids), goals[:, 0], goals[:, 1], STAY] = True
    return optimal


def single_action_labels(optimal, starts):
    """Int64 [N]: the first optimal action at each start (up, down, left, right, then stay)."""
    at_start = optimal[np.arange(optimal.shape[0]), starts[:, 0], starts[:, 1]]
    if not at_start.any(axis=1).all():
        raise ValueError("some start cells have no optimal action (wall or cannot reach the goal)")
    return at_start.argmax(axis=1).astype(np.int64)  # argmax returns the first True


def multi_optimal_fraction(dist, optimal):
    """Mean over grids of the share of reachable non-goal cells with more than one optimal move."""
    moving = dist > 0
    ambiguous = moving & (optimal[..., :STAY].sum(axis=-1) > 1)
    per_grid = ambiguous.sum(axis=(1, 2)) / np.maximum(moving.sum(axis=(1, 2)), 1)
    return float(per_grid.mean())


# -----------------------------------------------------------------------------
# random grids


def pick_uniform_cells(mask, rng):
    """One uniformly random True cell per grid of a [N, G, G] mask as (row, col) [N, 2]."""
    num_grids, size, _ = mask.shape
    # keys in [1, 2) on masked cells and 0 elsewhere, so the argmax is uniform among masked cells
    keys = (rng.random(mask.shape, dtype=np.float32) + 1) * mask
    flat = keys.reshape(num_grids, -1).argmax(axis=1)
    return np.stack(np.divmod(flat, size), axis=1).astype(np.int64)


def place_start_and_goal(grids, rng):
    """A uniform free goal and a uniform start that reaches it, per grid; grids where none exists are dropped.

    Returns (grids, starts, goals) of the kept grids.
    """
    free = grids == 0
    goals = pick_uniform_cells(free, rng)
    start_ok = bfs_distance_field(grids, goals) > 0  # reachable and not the goal itself
    starts = pick_uniform_cells(start_ok, rng)
    keep = free.any(axis=(1, 2)) & start_ok.any(axis=(1, 2))
    return grids[keep], starts[keep], goals[keep]


def random_grids(n, size, density, rng):
    """n grids with walls drawn i.i.d. at `density`, and a goal plus a distinct start that reaches it.

    Rejection sampling in bulk: draw a batch, drop grids where no start can reach the goal, repeat.
    """
    if not 0.0 <= density < 1.0 or size < 2:
        raise ValueError(f"need 0 <= density < 1 and size >= 2, got density={density}, size={size}")
    max_batch = max(1, CHUNK_CELLS // (size * size))
    kept_grids = [np.zeros((0, size, size), dtype=np.uint8)]
    kept_starts, kept_goals = [np.zeros((0, 2), dtype=np.int64)], [np.zeros((0, 2), dtype=np.int64)]
    num_kept, num_drawn, accept_rate = 0, 0, 1.0
    while num_kept < n:
        if num_drawn > 100 * n + 10 * max_batch:
            raise RuntimeError(f"under 1% of grids are solvable at density={density}, size={size}")
        # oversample by the observed acceptance rate so the last batch rarely falls short
        batch = min(int((n - num_kept) / max(accept_rate, 0.01) * 1.02) + 16, max_batch)
        grids, starts, goals = place_start_and_goal((rng.random((batch, size, size), dtype=np.float32) < density).astype(np.uint8), rng)
        kept_grids.append(grids)
        kept_starts.append(starts)
        kept_goals.append(goals)
        num_kept += len(grids)
        num_drawn += batch
        accept_rate = num_kept / num_drawn
    return (
        np.concatenate(kept_grids)[:n],
        np.concatenate(kept_starts)[:n],
        np.concatenate(kept_goals)[:n],
    )


# -----------------------------------------------------------------------------
# symmetries of the square (dihedral group D4)
# symmetry k: transpose if k >= 4, then rotate counter-clockwise by 90 degrees (k % 4) times


def transform_grid(arr, k):
    """Apply symmetry k (0 = identity) to an array whose axes 1 and 2 are the grid's (row, col)."""
    if k >= 4:
        arr = np.swapaxes(arr, 1, 2)
    return np.rot90(arr, k % 4, axes=(1, 2))


def transform_positions(pos, k, size):
    """Map (row, col) positions [..., 2] to where symmetry k moves them on a size x size grid."""
    row, col = pos[..., 0], pos[..., 1]
    if k >= 4:
        row, col = col, row
    for _ in range(k % 4):
        # np.rot90 counter-clockwise: new[i, j] = old[j, size - 1 - i], so (r, c) -> (size - 1 - c, r)
        row, col = size - 1 - col, row
    return np.stack([row, col], axis=-1)


def _action_permutations():
    """[8, 5]: where symmetry k sends each action, found by moving each delta around a 3x3 centre."""
    centre = np.array([1, 1])
    perms = np.zeros((NUM_SYMMETRIES, len(ACTIONS)), dtype=np.int64)
    for k in range(NUM_SYMMETRIES):
        new_deltas = transform_positions(centre + ACTION_DELTAS, k, 3) - transform_positions(centre, k, 3)
        matches = (new_deltas[:, None, :] == ACTION_DELTAS[None, :, :]).all(axis=-1)
        perms[k] = matches.argmax(axis=1)
    return perms


ACTION_PERMUTATIONS = _action_permutations()  # new_optimal[..., P[k][a]] = old_optimal[..., a]


def transform_optimal(optimal, k):
    """Symmetry k on an optimal-set array [N, G, G, 5]: move the cells, then relabel the actions."""
    moved = transform_grid(optimal, k)
    out = np.empty_like(moved)
    out[..., ACTION_PERMUTATIONS[k]] = moved
    return out


def augment(split):
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


_augment_split = augment  # generate_dataset's `augment` flag shadows the name inside it


def canonical_grid_ids(grids, goals=None):
    """Int64 [N], equal for two grids iff one is a symmetry of the other; comparable within a call.

    With `goals`, a grid and its goal cell count together: the same walls with another goal differ.
    """
    num_grids = grids.shape[0]
    planes = grids.astype(bool)
    if goals is not None:  # a second bit plane with the goal
        goal_plane = np.zeros_like(planes)
        goal_plane[np.arange(num_grids), goals[:, 0], goals[:, 1]] = True
        planes = np.concatenate([planes, goal_plane], axis=2)  # [N, G, 2G]: side by side, moved together below
    views = []
    for k in range(NUM_SYMMETRIES):
        halves = np.split(planes, planes.shape[2] // grids.shape[2], axis=2)
        views.append(np.concatenate([transform_grid(half, k) for half in halves], axis=2))
    rows = np.packbits(np.stack(views).reshape(NUM_SYMMETRIES * num_grids, -1), axis=1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    # the smallest id over a grid's 8 views is the same for every member of its orbit
    return inverse.reshape(NUM_SYMMETRIES, num_grids).min(axis=0).astype(np.int64)


# -----------------------------------------------------------------------------
# datasets on disk


def _label(grids, starts, goals):
    """A split dict with BFS distances, optimal sets and single action labels filled in."""
    dist = bfs_distance_field(grids, goals)
    optimal = optimal_action_sets(grids, dist, goals)
    action = single_action_labels(optimal, starts)
    return dict(grids=grids, starts=starts, goals=goals, dist=dist, optimal=optimal, action=action)


def _distinct_samples(total, draw, with_goal=False):
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
    """Write train/val/test .npz files plus dataset.json into out_dir, atomically; return the json dict.

    `layout` is one layout or a weighted mix (layouts.parse_layouts); with `min_grid_size` every sample's side
    is drawn uniformly from min_grid_size..grid_size and smaller grids are padded with walls to grid_size.
    Samples are distinct up to symmetry across all splits within each (layout, side) group, so no test grid
    (nor any rotation or reflection of it) is seen in training; for mazes, rooms and map windows, which have
    few wall patterns at small sides, a grid counts with its goal. Only train is augmented, after splitting.
    `eval_sizes` adds held-out sets of `eval_grids` grids per layout and side at their own size (eval/*.npz),
    for the per-layout, per-size table of `kiln evaluate`.
    """
    from kiln.recipes.nav.layouts import draw_layout, parse_layouts, read_map_folder

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite a dataset")
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    layouts, maps_dir = parse_layouts(layout)
    maps = read_map_folder(maps_dir) if maps_dir else None
    sides = list(range(min_grid_size or grid_size, grid_size + 1))
    groups = [(name, side) for name in layouts for side in sides]
    weights = [layouts[name] / len(sides) for name, _ in groups]
    counts = {"train": num_train, "val": num_val, "test": num_test}
    per_group = _group_counts(counts, groups, weights, rng)
    eval_groups = [(name, side) for name in layouts for side in sorted(set(eval_sizes))]
    parts = {name: [] for name in SPLITS}
    evals = {}
    for group in dict.fromkeys(groups + eval_groups):  # in order, without repeats
        name, side = group
        split_counts = [per_group[split][groups.index(group)] if group in groups else 0 for split in SPLITS]
        num_eval = eval_grids if group in eval_groups else 0
        # random walls are drawn from 2^(side^2) patterns, so whole grids are kept distinct; a maze or a
        # floor of rooms has few wall patterns at small sides, so there the grid and its goal together are
        grids, starts, goals = _distinct_samples(sum(split_counts) + num_eval,
                                                 lambda n: draw_layout(name, n, side, obstacle_density, rng, maps),
                                                 with_goal=name != "random")
        bounds = np.cumsum([0] + split_counts)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
            parts[split].append(_label(*_pad_with_walls(grids[lo:hi], starts[lo:hi], goals[lo:hi], grid_size, rng)))
        if num_eval:
            evals[f"{name}_{side}"] = _label(grids[bounds[-1]:], starts[bounds[-1]:], goals[bounds[-1]:])
    splits = {split: _concat_shuffled(parts[split], rng) for split in SPLITS}
    labelled = [splits[split] for split in SPLITS]
    if augment:
        splits["train"] = _augment_split(splits["train"])
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
        "multi_optimal_fraction": multi_optimal_fraction(np.concatenate([s["dist"] for s in labelled]),
                                                         np.concatenate([s["optimal"] for s in labelled])),
        "generation_seconds": time.perf_counter() - start_time,
    }
    # write into a temporary sibling, then rename: a failure never leaves a half-written dataset
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, split in splits.items():
            np.savez(tmp_dir / f"{name}.npz", **split)
        if evals:
            (tmp_dir / "eval").mkdir()
            for key, group in evals.items():
                np.savez(tmp_dir / "eval" / f"{key}.npz", **group)
        (tmp_dir / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp_dir, out_dir)  # also replaces an existing empty out_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return info


def load_split(data_dir, split):
    """Arrays of one split written by generate_dataset, as a dict keyed like SPLIT_KEYS."""
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise ValueError(f"{path}: split file not found")
    with np.load(path) as npz:
        missing = [key for key in SPLIT_KEYS if key not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        return {key: npz[key] for key in SPLIT_KEYS}


# -----------------------------------------------------------------------------
# MovingAI benchmark files (https://movingai.com/benchmarks/formats.html)

_MOVINGAI_PASSABLE = ".GS"  # ground, ground, swamp
_MOVINGAI_BLOCKED = "@OTW"  # out of bounds, out of bounds, trees, water


def read_movingai_map(path):
    """A MovingAI .map file as a uint8 [H, W] grid (1 = wall)."""
    lines = Path(path).read_text().splitlines()
    header = {}
    for line_no, line in enumerate(lines):
        fields = line.split()
        if fields == ["map"]:
            break
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_no + 1}: malformed header line {line!r}")
        header[fields[0]] = fields[1]
    else:
        raise ValueError(f"{path}: no 'map' line")
    try:
        height, width = int(header["height"]), int(header["width"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: header needs integer 'height' and 'width', got {header}") from None
    rows = [row.rstrip() for row in lines[line_no + 1 :]]
    while rows and not rows[-1]:
        rows.pop()  # tolerate trailing blank lines
    if len(rows) != height or any(len(row) != width for row in rows):
        raise ValueError(f"{path}: expected {height} rows of width {width} after 'map'")
    cells = np.array([list(row) for row in rows]).reshape(height, width)
    unknown = set(np.unique(cells)) - set(_MOVINGAI_PASSABLE + _MOVINGAI_BLOCKED)
    if unknown:
        raise ValueError(f"{path}: unknown terrain characters {sorted(unknown)}")
    return np.isin(cells, list(_MOVINGAI_BLOCKED)).astype(np.uint8)


def read_movingai_scen(path):
    """Start and goal (row, col) int64 [M, 2] arrays from a MovingAI .scen file."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].split()[:1] != ["version"]:
        raise ValueError(f"{path}: first line must be 'version ...'")
    coords = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        # bucket map width height start_x start_y goal_x goal_y optimal_length; split from the right
        fields = line.rsplit(None, 7)
        try:
            _width, _height, start_x, start_y, goal_x, goal_y = (int(f) for f in fields[1:7])
            float(fields[7])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{line_no}: malformed scenario line {line!r}") from None
        if len(fields[0].split()) < 2:
            raise ValueError(f"{path}:{line_no}: malformed scenario line {line!r}")
        coords.append((start_y, start_x, goal_y, goal_x))  # x is the column, y the row
    coords = np.array(coords, dtype=np.int64).reshape(-1, 4)
    return coords[:, :2], coords[:, 2:]
