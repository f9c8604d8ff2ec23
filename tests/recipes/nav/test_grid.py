"""Tests for kiln.recipes.nav.grid, checked against networkx as an independent reference."""

import networkx as nx
import numpy as np

from kiln.recipes.nav.grid import (ACTION_DELTAS, ACTION_PERMUTATIONS, ACTIONS, bfs_distance_field, canonical_grid_ids,
                                   multi_optimal_fraction, optimal_action_sets, single_action_labels, transform_grid,
                                   transform_optimal, transform_positions)
from kiln.recipes.nav.layouts import random_grids


def grid_graph(grid):
    """4-connected networkx graph of the free cells of one [G, G] grid."""
    graph = nx.grid_2d_graph(*grid.shape)
    graph.remove_nodes_from(map(tuple, np.argwhere(grid == 1)))
    return graph


def networkx_distances(grid, goal):
    """Dict cell -> shortest path length to goal, computed by networkx."""
    return nx.single_source_shortest_path_length(grid_graph(grid), tuple(goal))


def random_walled_grids(rng, count):
    """Grids of mixed sizes and densities (dense ones have unreachable pockets) with a free goal."""
    cases = []
    for i in range(count):
        size = int(rng.integers(5, 13))
        density = (0.0, 0.15, 0.3, 0.45)[i % 4]
        grid = (rng.random((size, size)) < density).astype(np.uint8)
        goal = np.array([rng.integers(size), rng.integers(size)])
        grid[goal[0], goal[1]] = 0
        cases.append((grid, goal))
    return cases


def test_bfs_matches_networkx():
    rng = np.random.default_rng(1)
    saw_unreachable = False
    for grid, goal in random_walled_grids(rng, 50):
        dist = bfs_distance_field(grid[None], goal[None])[0]
        assert dist.dtype == np.int16
        reference = np.full(grid.shape, -1)
        for cell, length in networkx_distances(grid, goal).items():
            reference[cell] = length
        np.testing.assert_array_equal(dist, reference)
        saw_unreachable |= bool(((grid == 0) & (reference == -1)).any())
    assert saw_unreachable  # the dense cases must exercise unreachable free cells


def test_bfs_batched_and_chunked_equal_one_at_a_time(monkeypatch):
    rng = np.random.default_rng(2)
    grids, _, goals = random_grids(64, 9, 0.3, rng)
    batched = bfs_distance_field(grids, goals)
    monkeypatch.setattr("kiln.recipes.nav.grid.CHUNK_CELLS", 200)  # 2 grids per chunk
    monkeypatch.setattr("kiln.recipes.nav.layouts.CHUNK_CELLS", 200)
    np.testing.assert_array_equal(bfs_distance_field(grids, goals), batched)
    for i in range(0, 64, 7):
        np.testing.assert_array_equal(batched[i], bfs_distance_field(grids[i : i + 1], goals[i : i + 1])[0])
    more_grids, _, _ = random_grids(50, 9, 0.3, rng)  # many small rejection-sampling batches
    assert more_grids.shape == (50, 9, 9)


def test_bfs_rectangular_grid_matches_networkx():
    rng = np.random.default_rng(12)
    grid = (rng.random((7, 13)) < 0.3).astype(np.uint8)
    goal = np.array([3, 11])
    grid[tuple(goal)] = 0
    dist = bfs_distance_field(grid[None], goal[None])[0]
    reference = np.full(grid.shape, -1)
    for cell, length in networkx_distances(grid, goal).items():
        reference[cell] = length
    np.testing.assert_array_equal(dist, reference)


def test_optimal_sets_match_networkx():
    rng = np.random.default_rng(3)
    for grid, goal in random_walled_grids(rng, 30):
        size = grid.shape[0]
        dist = bfs_distance_field(grid[None], goal[None])
        optimal = optimal_action_sets(grid[None], dist, goal[None])[0]
        reference = networkx_distances(grid, goal)
        cells = [(int(r), int(c)) for r, c in rng.integers(0, size, size=(25, 2))]
        for cell in cells:
            for a, (drow, dcol) in enumerate(ACTION_DELTAS):
                if a == 4:
                    expected = cell == tuple(goal)
                else:
                    # a is optimal iff moving by a then following a shortest path is a shortest path
                    nxt = (cell[0] + drow, cell[1] + dcol)
                    expected = cell in reference and nxt in reference and reference[nxt] + 1 == reference[cell]
                assert optimal[cell][a] == expected, (cell, ACTIONS[a])
        assert not optimal[grid == 1].any()


def test_single_action_labels_tie_break():
    grid = np.zeros((1, 5, 5), dtype=np.uint8)
    goals = np.array([[0, 0]])
    dist = bfs_distance_field(grid, goals)
    optimal = optimal_action_sets(grid, dist, goals)
    starts = np.array([[4, 4]])  # up and left are both optimal: up wins
    assert single_action_labels(optimal, starts).tolist() == [ACTIONS.index("up")]
    starts = np.array([[0, 3]])  # only left is optimal
    assert single_action_labels(optimal, starts).tolist() == [ACTIONS.index("left")]


def test_multi_optimal_fraction_in_expected_range():
    rng = np.random.default_rng(5)
    grids, _, goals = random_grids(2000, 8, 0.25, rng)
    dist = bfs_distance_field(grids, goals)
    fraction = multi_optimal_fraction(dist, optimal_action_sets(grids, dist, goals))
    assert 0.3 < fraction < 0.6


def asymmetric_grid(size=6):
    grid = np.zeros((size, size), dtype=np.uint8)
    grid[0, 1] = grid[0, 2] = grid[3, 0] = 1  # no rotation or reflection maps this onto itself
    return grid


def test_transforms_of_asymmetric_grid_are_distinct():
    grid = asymmetric_grid()[None]
    views = [transform_grid(grid, k)[0].tobytes() for k in range(8)]
    assert len(set(views)) == 8
    np.testing.assert_array_equal(transform_grid(grid, 0), grid)


def test_transform_positions_follow_the_grid():
    size = 7
    rng = np.random.default_rng(6)
    positions = rng.integers(0, size, size=(20, 2))
    marked = np.zeros((20, size, size), dtype=np.uint8)
    marked[np.arange(20), positions[:, 0], positions[:, 1]] = 1
    for k in range(8):
        moved = transform_positions(positions, k, size)
        transformed = transform_grid(marked, k)
        assert (transformed[np.arange(20), moved[:, 0], moved[:, 1]] == 1).all()


def test_action_permutations_are_permutations_fixing_stay():
    perms = ACTION_PERMUTATIONS
    assert perms.shape == (8, 5)
    for row in perms:
        assert sorted(row.tolist()) == [0, 1, 2, 3, 4]
        assert row[4] == 4
    assert perms[0].tolist() == [0, 1, 2, 3, 4]
    assert len({tuple(row) for row in perms.tolist()}) == 8


def test_symmetry_commutes_with_labelling():
    rng = np.random.default_rng(7)
    grids, starts, goals = random_grids(40, 7, 0.3, rng)
    dist = bfs_distance_field(grids, goals)
    optimal = optimal_action_sets(grids, dist, goals)
    for k in range(8):
        new_grids = transform_grid(grids, k)
        new_goals = transform_positions(goals, k, 7)
        new_dist = bfs_distance_field(new_grids, new_goals)
        np.testing.assert_array_equal(new_dist, transform_grid(dist, k))
        np.testing.assert_array_equal(
            optimal_action_sets(new_grids, new_dist, new_goals), transform_optimal(optimal, k)
        )


def test_canonical_ids():
    rng = np.random.default_rng(9)
    grids, _, _ = random_grids(50, 8, 0.3, rng)
    orbit = np.concatenate([transform_grid(grids[:5], k) for k in range(8)])
    ids = canonical_grid_ids(np.concatenate([grids, orbit]))
    assert ids.dtype == np.int64
    assert len(np.unique(ids[:50])) == 50  # random 8x8 grids essentially never coincide
    orbit_ids = ids[50:].reshape(8, 5)
    assert (orbit_ids == ids[:5]).all()


def test_bfs_distances_past_int16_widen_instead_of_failing():
    """A MovingAI maze or spiral can have paths longer than 32767 steps; a corridor of 33,000 cells has one."""
    corridor = np.zeros((1, 1, 33_000), dtype=np.uint8)
    dist = bfs_distance_field(corridor, np.array([[0, 0]]))
    assert dist.dtype == np.int32
    np.testing.assert_array_equal(dist[0, 0], np.arange(33_000))
    assert bfs_distance_field(np.zeros((2, 8, 8), np.uint8), np.array([[0, 0], [7, 7]])).dtype == np.int16  # the datasets' dtype
