"""The layouts a dataset's grids are drawn from: random walls, perfect mazes, rooms with doors, windows of a user's maps.

Every generator returns (grids, starts, goals): uint8 [N, G, G] (1 = wall), a goal on a free cell and a
distinct start that can reach it. All are vectorised over the whole batch:
spanning trees come from one scipy minimum_spanning_tree call on a block-diagonal graph of all grids;
the Python loops run over symmetries, maps or rejection rounds, never over grids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

from kiln.recipes.nav.grid import CHUNK_CELLS, NUM_SYMMETRIES, place_start_and_goal, transform_grid

LAYOUTS = ("random", "maze", "rooms")  # plus "maps:DIR", windows of a folder of MovingAI maps
ROOM_SIDES = (3, 7)       # room interiors are 3 to 7 cells wide (the last one along an axis takes what is left)
EXTRA_DOOR_CHANCE = 1 / 3  # doors beyond a spanning tree of the rooms, so that some pairs have several routes


# -----------------------------------------------------------------------------
# random spanning trees of many lattices at once


def random_spanning_trees(rows, cols, rng):
    """A random spanning tree of every rows[i] x cols[i] lattice: which lattice edges it keeps.

    Returns (right [N, R, C-1], down [N, R-1, C]) bool, R and C the largest sizes: right[i, r, c] keeps
    the edge (r, c)-(r, c+1) of lattice i. Minimum spanning trees under i.i.d. random weights
    (randomised Kruskal), all lattices in one block-diagonal graph.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    max_rows, max_cols = int(rows.max()), int(cols.max())
    offsets = np.cumsum(rows * cols) - rows * cols
    r = np.arange(max_rows)[None, :, None]
    c = np.arange(max_cols)[None, None, :]
    node = offsets[:, None, None] + r * cols[:, None, None] + c  # [N, R, C]; meaningful inside each lattice
    inside = (r < rows[:, None, None]) & (c < cols[:, None, None])
    right_ok = inside[:, :, 1:] & inside[:, :, :-1]
    down_ok = inside[:, 1:, :] & inside[:, :-1, :]
    u = np.concatenate([node[:, :, :-1][right_ok], node[:, :-1, :][down_ok]])
    v = np.concatenate([node[:, :, 1:][right_ok], node[:, 1:, :][down_ok]])
    total = int((rows * cols).sum())
    weights = rng.random(len(u)) + 1.0  # in [1, 2): scipy reads a zero weight as a missing edge
    tree = minimum_spanning_tree(coo_matrix((weights, (u, v)), shape=(total, total)).tocsr()).tocoo()
    tree_u = np.minimum(tree.row, tree.col).astype(np.int64)  # scipy's indices are int32: u * total overflows them
    tree_v = np.maximum(tree.row, tree.col).astype(np.int64)
    kept = np.isin(u * total + v, tree_u * total + tree_v)
    right = np.zeros(right_ok.shape, dtype=bool)
    down = np.zeros(down_ok.shape, dtype=bool)
    num_right = int(right_ok.sum())
    right[right_ok] = kept[:num_right]
    down[down_ok] = kept[num_right:]
    return right, down


def _random_symmetries(grids, rng):
    """Each grid turned by its own random symmetry of the square (so no side of a layout is special)."""
    which = rng.integers(0, NUM_SYMMETRIES, size=len(grids))
    out = np.empty_like(grids)
    for k in range(NUM_SYMMETRIES):
        out[which == k] = transform_grid(grids[which == k], k)
    return out


# -----------------------------------------------------------------------------
# layouts


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


def maze_layouts(n, size, rng):
    """Perfect mazes (exactly one path between any two free cells), corridors one cell wide.

    Maze cells sit at even (row, col); a tree edge opens the wall cell between two of them. On an
    even side the last row and column stay walls; a random symmetry moves that strip to any side.
    """
    cells = (size + 1) // 2
    right, down = random_spanning_trees(np.full(n, cells), np.full(n, cells), rng)
    grids = np.ones((n, size, size), dtype=np.uint8)
    span = 2 * cells - 1
    grids[:, 0:span:2, 0:span:2] = 0
    grids[:, 0:span:2, 1:span:2] = ~right
    grids[:, 1:span:2, 0:span:2] = ~down
    return _random_symmetries(grids, rng)


def _wall_lines(n, size, rng):
    """Positions of the walls between rooms along one axis: [N, K] sorted, padded with `size` (no wall)."""
    low, high = ROOM_SIDES
    most = size // (low + 1) + 1
    sides = rng.integers(low, high + 1, size=(n, most))
    lines = np.cumsum(sides + 1, axis=1) - 1
    # the last room along the axis must keep at least `low` cells
    return np.where(lines <= size - 1 - low, lines, size)


def _room_spans(lines, size):
    """First and one-past-last cell of every room between wall lines: [N, K+1] each (empty rooms past the last)."""
    starts = np.concatenate([np.zeros((len(lines), 1), dtype=lines.dtype), lines + 1], axis=1)
    ends = np.concatenate([lines, np.full((len(lines), 1), size)], axis=1)
    return np.minimum(starts, size), ends


def room_layouts(n, size, rng):
    """Rooms separated by one-cell walls, joined by one-cell doors.

    Wall lines cut the grid into a lattice of rooms ROOM_SIDES wide. The doors are a random spanning
    tree of that lattice (every room reachable) plus each remaining wall between two rooms with
    probability EXTRA_DOOR_CHANCE (loops, so some pairs have several shortest routes).
    """
    row_lines, col_lines = _wall_lines(n, size, rng), _wall_lines(n, size, rng)
    grids = np.zeros((n, size, size), dtype=np.uint8)
    batch = np.arange(n)[:, None]
    grids[np.broadcast_to(batch, row_lines.shape)[row_lines < size], row_lines[row_lines < size], :] = 1
    grids[np.broadcast_to(batch, col_lines.shape)[col_lines < size], :, col_lines[col_lines < size]] = 1
    room_rows = (row_lines < size).sum(1) + 1
    room_cols = (col_lines < size).sum(1) + 1
    right, down = random_spanning_trees(room_rows, room_cols, rng)
    right |= rng.random(right.shape) < EXTRA_DOOR_CHANCE
    down |= rng.random(down.shape) < EXTRA_DOOR_CHANCE
    row_start, row_end = _room_spans(row_lines, size)  # [N, R]
    col_start, col_end = _room_spans(col_lines, size)  # [N, C]
    max_rows, max_cols = right.shape[1], down.shape[2]
    row_start, row_end = row_start[:, :max_rows], row_end[:, :max_rows]
    col_start, col_end = col_start[:, :max_cols], col_end[:, :max_cols]
    # a door between rooms (i, j) and (i, j+1): on wall column col_lines[j], at a random row of room i
    valid = right & (np.arange(max_cols - 1)[None, None, :] < room_cols[:, None, None] - 1) \
        & (np.arange(max_rows)[None, :, None] < room_rows[:, None, None])
    height = (row_end - row_start)[:, :, None]
    door_row = row_start[:, :, None] + (rng.random(right.shape) * height).astype(np.int64)
    door_col = np.broadcast_to(col_lines[:, None, : max_cols - 1], right.shape)
    grids[np.broadcast_to(batch[:, :, None], right.shape)[valid], door_row[valid], door_col[valid]] = 0
    # a door between rooms (i, j) and (i+1, j): on wall row row_lines[i], at a random column of room j
    valid = down & (np.arange(max_rows - 1)[None, :, None] < room_rows[:, None, None] - 1) \
        & (np.arange(max_cols)[None, None, :] < room_cols[:, None, None])
    width = (col_end - col_start)[:, None, :]
    door_col = col_start[:, None, :] + (rng.random(down.shape) * width).astype(np.int64)
    door_row = np.broadcast_to(row_lines[:, : max_rows - 1, None], down.shape)
    grids[np.broadcast_to(batch[:, :, None], down.shape)[valid], door_row[valid], door_col[valid]] = 0
    return grids


def map_windows(maps, n, size, rng):
    """n random size x size windows, uniform over all window positions of all maps that are big enough."""
    big = [grid for grid in maps if min(grid.shape) >= size]
    if not big:
        raise ValueError(f"no map is at least {size}x{size} (largest: {max(g.shape for g in maps)})")
    positions = np.array([(g.shape[0] - size + 1) * (g.shape[1] - size + 1) for g in big], dtype=np.float64)
    which = rng.choice(len(big), size=n, p=positions / positions.sum())
    windows = np.empty((n, size, size), dtype=np.uint8)
    for m, grid in enumerate(big):  # one vectorised gather per map
        picked = np.flatnonzero(which == m)
        tops = rng.integers(0, grid.shape[0] - size + 1, size=len(picked))
        lefts = rng.integers(0, grid.shape[1] - size + 1, size=len(picked))
        windows[picked] = np.lib.stride_tricks.sliding_window_view(grid, (size, size))[tops, lefts]
    return windows


def layout_samples(layout, n, size, rng, maps=None):
    """n (grids, starts, goals) of one layout: "maze", "rooms", or "maps" (windows of `maps`)."""
    make = {"maze": maze_layouts, "rooms": room_layouts}.get(layout)
    if make is None and layout != "maps":
        raise ValueError(f"unknown layout '{layout}'")
    max_batch = max(1, CHUNK_CELLS // (size * size))
    parts, num_kept, num_drawn = [], 0, 0
    while num_kept < n:
        if num_drawn > 100 * n + 10 * max_batch:
            raise RuntimeError(f"under 1% of {layout} {size}x{size} grids have a start and a goal that connect")
        batch = min(n - num_kept + 16, max_batch)
        grids = make(batch, size, rng) if make else map_windows(maps, batch, size, rng)
        kept = place_start_and_goal(grids, rng)
        parts.append(kept)
        num_kept += len(kept[0])
        num_drawn += batch
    return tuple(np.concatenate(arrays)[:n] for arrays in zip(*parts))


# -----------------------------------------------------------------------------
# what `--layout` asks for


def parse_layouts(spec):
    """A `--layout` value as ({layout: share}, the maps folder or None), without reading any file.

    One layout ("random", "maze", "rooms", "maps:DIR") or a weighted mix such as "random=2,maze=1,rooms=1";
    shares are normalised to sum to 1. A maps:DIR layout is named "maps" in the result.
    """
    shares, maps_dir = {}, None
    for part in str(spec).split(","):
        name, _, weight = part.strip().partition("=")
        name = name.strip()
        if name.startswith("maps:"):
            maps_dir = Path(name[len("maps:"):])
            name = "maps"
        elif name not in LAYOUTS:
            raise ValueError(f"unknown layout '{name}' in '{spec}'; use {', '.join(LAYOUTS)}, maps:DIR "
                             f"or a weighted mix like random=2,maze=1")
        try:
            share = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"layout weight '{weight}' in '{spec}' is not a number") from None
        if share <= 0 or name in shares:
            raise ValueError(f"layout '{name}' in '{spec}' needs one positive weight")
        shares[name] = share
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}, maps_dir


def draw_layout(name, n, size, density, rng, maps=None):
    """n (grids, starts, goals) of one parsed layout; `density` is the random layout's wall density."""
    if name == "random":
        return random_grids(n, size, density, rng)
    return layout_samples(name, n, size, rng, maps=maps)
