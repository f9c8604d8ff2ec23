"""Grid primitives, numpy only and vectorised over whole batches of grids: BFS distance fields, optimal action
sets, start and goal placement, and the 8 symmetries of the square. The only Python loops run over BFS
wavefront steps or the 8 symmetries.

Conventions (other code depends on them):
    grids    uint8 [N, G, G]     1 = wall, 0 = free
    starts   int64 [N, 2]        (row, col); goals likewise
    dist     int16 [N, G, G]     steps to the goal, -1 for walls and cells that cannot reach it (int32 on grids of
                                 over 32,767 cells, where a path can be longer than int16 holds)
    optimal  bool  [N, G, G, 5]  optimal action set per cell, actions indexed as ACTIONS
    action   int64 [N]           first optimal action at the start in order up, down, left, right
"""

import numpy as np

ACTIONS = ("up", "down", "left", "right", "stay")
ACTION_DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]])  # (row, col) per action
STAY = 4
NUM_SYMMETRIES = 8
CHUNK_CELLS = 1 << 18  # cells per batch in the heavy loops: small enough to stay in cache


# -----------------------------------------------------------------------------
# BFS distance field and optimal actions


def bfs_distance_field(grids, goals):
    """BFS steps from every cell to its grid's goal, -1 where unreachable; int16 [N, H, W], int32 where a distance
    (always less than the number of cells) might not fit int16."""
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
    dist = np.zeros(free.shape, dtype=np.int16 if height * width <= np.iinfo(np.int16).max else np.int32)
    # one iteration per wavefront: all grids advance together until every frontier is empty
    while frontier.any():
        dist += unreached
        neighbours = np.zeros_like(frontier)
        neighbours[1:] |= frontier[:-1]
        neighbours[:-1] |= frontier[1:]
        neighbours[stride:] |= frontier[:-stride]
        neighbours[:-stride] |= frontier[stride:]
        frontier = neighbours & unreached
        unreached ^= frontier
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
# start and goal cells


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

