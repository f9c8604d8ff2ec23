"""Tests for kiln.recipes.nav.data, checked against networkx as an independent reference."""

import json

import networkx as nx
import numpy as np
import pytest

from kiln.recipes.nav import data


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
        dist = data.bfs_distance_field(grid[None], goal[None])[0]
        assert dist.dtype == np.int16
        reference = np.full(grid.shape, -1)
        for cell, length in networkx_distances(grid, goal).items():
            reference[cell] = length
        np.testing.assert_array_equal(dist, reference)
        saw_unreachable |= bool(((grid == 0) & (reference == -1)).any())
    assert saw_unreachable  # the dense cases must exercise unreachable free cells


def test_bfs_batched_and_chunked_equal_one_at_a_time(monkeypatch):
    rng = np.random.default_rng(2)
    grids, _, goals = data.random_grids(64, 9, 0.3, rng)
    batched = data.bfs_distance_field(grids, goals)
    monkeypatch.setattr(data, "CHUNK_CELLS", 200)  # 2 grids per chunk
    np.testing.assert_array_equal(data.bfs_distance_field(grids, goals), batched)
    for i in range(0, 64, 7):
        np.testing.assert_array_equal(batched[i], data.bfs_distance_field(grids[i : i + 1], goals[i : i + 1])[0])
    more_grids, _, _ = data.random_grids(50, 9, 0.3, rng)  # many small rejection-sampling batches
    assert more_grids.shape == (50, 9, 9)


def test_bfs_rectangular_grid_matches_networkx():
    rng = np.random.default_rng(12)
    grid = (rng.random((7, 13)) < 0.3).astype(np.uint8)
    goal = np.array([3, 11])
    grid[tuple(goal)] = 0
    dist = data.bfs_distance_field(grid[None], goal[None])[0]
    reference = np.full(grid.shape, -1)
    for cell, length in networkx_distances(grid, goal).items():
        reference[cell] = length
    np.testing.assert_array_equal(dist, reference)


def test_optimal_sets_match_networkx():
    rng = np.random.default_rng(3)
    for grid, goal in random_walled_grids(rng, 30):
        size = grid.shape[0]
        dist = data.bfs_distance_field(grid[None], goal[None])
        optimal = data.optimal_action_sets(grid[None], dist, goal[None])[0]
        reference = networkx_distances(grid, goal)
        cells = [(int(r), int(c)) for r, c in rng.integers(0, size, size=(25, 2))]
        for cell in cells:
            for a, (drow, dcol) in enumerate(data.ACTION_DELTAS):
                if a == 4:
                    expected = cell == tuple(goal)
                else:
                    # a is optimal iff moving by a then following a shortest path is a shortest path
                    nxt = (cell[0] + drow, cell[1] + dcol)
                    expected = cell in reference and nxt in reference and reference[nxt] + 1 == reference[cell]
                assert optimal[cell][a] == expected, (cell, data.ACTIONS[a])
        assert not optimal[grid == 1].any()


def test_single_action_labels_tie_break():
    grid = np.zeros((1, 5, 5), dtype=np.uint8)
    goals = np.array([[0, 0]])
    dist = data.bfs_distance_field(grid, goals)
    optimal = data.optimal_action_sets(grid, dist, goals)
    starts = np.array([[4, 4]])  # up and left are both optimal: up wins
    assert data.single_action_labels(optimal, starts).tolist() == [data.ACTIONS.index("up")]
    starts = np.array([[0, 3]])  # only left is optimal
    assert data.single_action_labels(optimal, starts).tolist() == [data.ACTIONS.index("left")]


def test_random_grids_starts_goals_valid():
    rng = np.random.default_rng(4)
    grids, starts, goals = data.random_grids(200, 8, 0.35, rng)
    assert grids.shape == (200, 8, 8) and grids.dtype == np.uint8
    assert starts.dtype == np.int64 and goals.shape == (200, 2)
    for grid, start, goal in zip(grids, starts, goals):
        assert grid[tuple(start)] == 0 and grid[tuple(goal)] == 0
        assert tuple(start) != tuple(goal)
        assert nx.has_path(grid_graph(grid), tuple(start), tuple(goal))


def test_multi_optimal_fraction_in_expected_range():
    rng = np.random.default_rng(5)
    grids, _, goals = data.random_grids(2000, 8, 0.25, rng)
    dist = data.bfs_distance_field(grids, goals)
    fraction = data.multi_optimal_fraction(dist, data.optimal_action_sets(grids, dist, goals))
    assert 0.3 < fraction < 0.6


def asymmetric_grid(size=6):
    grid = np.zeros((size, size), dtype=np.uint8)
    grid[0, 1] = grid[0, 2] = grid[3, 0] = 1  # no rotation or reflection maps this onto itself
    return grid


def test_transforms_of_asymmetric_grid_are_distinct():
    grid = asymmetric_grid()[None]
    views = [data.transform_grid(grid, k)[0].tobytes() for k in range(8)]
    assert len(set(views)) == 8
    np.testing.assert_array_equal(data.transform_grid(grid, 0), grid)


def test_transform_positions_follow_the_grid():
    size = 7
    rng = np.random.default_rng(6)
    positions = rng.integers(0, size, size=(20, 2))
    marked = np.zeros((20, size, size), dtype=np.uint8)
    marked[np.arange(20), positions[:, 0], positions[:, 1]] = 1
    for k in range(8):
        moved = data.transform_positions(positions, k, size)
        transformed = data.transform_grid(marked, k)
        assert (transformed[np.arange(20), moved[:, 0], moved[:, 1]] == 1).all()


def test_action_permutations_are_permutations_fixing_stay():
    perms = data.ACTION_PERMUTATIONS
    assert perms.shape == (8, 5)
    for row in perms:
        assert sorted(row.tolist()) == [0, 1, 2, 3, 4]
        assert row[4] == 4
    assert perms[0].tolist() == [0, 1, 2, 3, 4]
    assert len({tuple(row) for row in perms.tolist()}) == 8


def test_symmetry_commutes_with_labelling():
    rng = np.random.default_rng(7)
    grids, starts, goals = data.random_grids(40, 7, 0.3, rng)
    dist = data.bfs_distance_field(grids, goals)
    optimal = data.optimal_action_sets(grids, dist, goals)
    for k in range(8):
        new_grids = data.transform_grid(grids, k)
        new_goals = data.transform_positions(goals, k, 7)
        new_dist = data.bfs_distance_field(new_grids, new_goals)
        np.testing.assert_array_equal(new_dist, data.transform_grid(dist, k))
        np.testing.assert_array_equal(
            data.optimal_action_sets(new_grids, new_dist, new_goals), data.transform_optimal(optimal, k)
        )


def test_augment_stacks_eight_consistent_copies():
    rng = np.random.default_rng(8)
    grids, starts, goals = data.random_grids(10, 6, 0.25, rng)
    dist = data.bfs_distance_field(grids, goals)
    optimal = data.optimal_action_sets(grids, dist, goals)
    split = dict(grids=grids, starts=starts, goals=goals, dist=dist, optimal=optimal,
                 action=data.single_action_labels(optimal, starts))
    big = data.augment(split)
    assert set(big) == set(data.SPLIT_KEYS)
    for key, arr in big.items():
        assert arr.shape[0] == 80
        np.testing.assert_array_equal(arr[:10], split[key])  # identity first
    # every copy is a valid sample: labels recomputed from scratch agree
    relabelled = data.bfs_distance_field(big["grids"], big["goals"])
    np.testing.assert_array_equal(relabelled, big["dist"])
    np.testing.assert_array_equal(big["action"], data.single_action_labels(big["optimal"], big["starts"]))


def test_canonical_ids():
    rng = np.random.default_rng(9)
    grids, _, _ = data.random_grids(50, 8, 0.3, rng)
    orbit = np.concatenate([data.transform_grid(grids[:5], k) for k in range(8)])
    ids = data.canonical_grid_ids(np.concatenate([grids, orbit]))
    assert ids.dtype == np.int64
    assert len(np.unique(ids[:50])) == 50  # random 8x8 grids essentially never coincide
    orbit_ids = ids[50:].reshape(8, 5)
    assert (orbit_ids == ids[:5]).all()


def test_generate_dataset_splits_and_files(tmp_path):
    out = tmp_path / "ds"
    info = data.generate_dataset(out, num_train=300, num_val=50, num_test=100, grid_size=6, augment=True, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "test.npz", "train.npz", "val.npz"]
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temporary directory left behind
    assert json.loads((out / "dataset.json").read_text()) == info
    assert info["format_version"] == 1 and info["augment"] is True and info["seed"] == 3
    assert info["counts"] == {"train": 2400, "val": 50, "test": 100}
    assert info["num_train_base"] == 300 and info["grid_size"] == 6
    splits = {name: data.load_split(out, name) for name in data.SPLITS}
    for name, split in splits.items():
        assert info["shapes"][name]["optimal"] == list(split["optimal"].shape)
        assert split["grids"].dtype == np.uint8 and split["dist"].dtype == np.int16
        assert split["optimal"].dtype == bool and split["action"].dtype == np.int64
    # no grid nor any symmetry of it is shared between test and train/val; none repeats within test
    ids = data.canonical_grid_ids(np.concatenate([splits[s]["grids"] for s in data.SPLITS]))
    train_ids, val_ids, test_ids = np.split(ids, [2400, 2450])
    assert not set(test_ids) & (set(train_ids) | set(val_ids))
    assert not set(val_ids) & set(train_ids)
    assert len(set(test_ids)) == 100
    # the first block of augmented train is the un-augmented train set, the rest its symmetries
    base_train = {key: arr[:300] for key, arr in splits["train"].items()}
    for key, arr in data.augment(base_train).items():
        np.testing.assert_array_equal(arr, splits["train"][key])


def test_generate_mixed_layouts_and_sizes(tmp_path):
    """Sides 8..12 padded with walls to 12, three layouts, and held-out sets at their own sizes."""
    out = tmp_path / "mixed"
    info = data.generate_dataset(out, num_train=240, num_val=30, num_test=60, grid_size=12, min_grid_size=8,
                                 layout="random=1,maze=1,rooms=1", eval_sizes=[8, 20], eval_grids=6, seed=4)
    assert info["counts"] == {"train": 240, "val": 30, "test": 60}
    assert info["eval_groups"] == {f"{layout}_{side}": 6 for side in (8, 20) for layout in ("random", "maze", "rooms")}
    train = data.load_split(out, "train")
    sides = []
    for grid, start, goal, dist in zip(train["grids"], train["starts"], train["goals"], train["dist"]):
        # the grid's own cells lie in one side x side window, walls all around it
        free = np.argwhere(grid == 0)
        extent = free.max(0) - free.min(0) + 1
        assert (extent <= 12).all()
        sides.append(extent.max())
        # labels are those of the padded grid: networkx BFS from the goal
        graph = nx.grid_2d_graph(12, 12)
        graph.remove_nodes_from(map(tuple, np.argwhere(grid == 1)))
        lengths = nx.single_source_shortest_path_length(graph, tuple(goal))
        assert dist[tuple(start)] == lengths[tuple(start)] > 0
    assert min(sides) <= 9 and max(sides) >= 11  # the sides really vary
    # mazes are there (a perfect maze's free cells form a tree), and so are open random grids
    is_tree = [nx.is_tree(nx.grid_2d_graph(12, 12).subgraph(map(tuple, np.argwhere(g == 0)))) for g in train["grids"][:60]]
    assert 5 < sum(is_tree) < 55
    big = data.load_split(out / "eval", "maze_20")
    assert big["grids"].shape == (6, 20, 20) and big["optimal"].shape == (6, 20, 20, 5)


def test_generate_dataset_is_seeded_and_refuses_non_empty_dir(tmp_path):
    kwargs = dict(num_train=20, num_val=5, num_test=10, grid_size=5)
    data.generate_dataset(tmp_path / "a", **kwargs)
    (tmp_path / "b").mkdir()  # an existing empty directory is fine
    data.generate_dataset(tmp_path / "b", **kwargs)
    for name in data.SPLITS:
        a, b = data.load_split(tmp_path / "a", name), data.load_split(tmp_path / "b", name)
        for key in data.SPLIT_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    assert data.load_split(tmp_path / "a", "train")["grids"].shape[0] == 20
    with pytest.raises(FileExistsError):
        data.generate_dataset(tmp_path / "a", **kwargs)


def test_generate_dataset_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        data.generate_dataset(tmp_path / "ds", num_train=10, num_val=0, num_test=5, grid_size=5)
    assert list(tmp_path.iterdir()) == []


def test_load_split_errors(tmp_path):
    with pytest.raises(ValueError, match="test.npz"):
        data.load_split(tmp_path, "test")
    np.savez(tmp_path / "val.npz", grids=np.zeros((1, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="val.npz"):
        data.load_split(tmp_path, "val")


def test_read_movingai_map_and_scen(tmp_path):
    map_path = tmp_path / "tiny.map"
    map_path.write_text("type octile\nheight 3\nwidth 4\nmap\n.@G.\nT..S\n.OW.\n")
    grid = data.read_movingai_map(map_path)
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
    scen_path = tmp_path / "tiny.map.scen"
    scen_path.write_text("version 1\n0\ttiny.map\t4\t3\t0\t0\t3\t2\t5.0\n1\ttiny.map\t4\t3\t2\t0\t0\t2\t4.41\n")
    starts, goals = data.read_movingai_scen(scen_path)
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, [[0, 0], [0, 2]])  # (row, col) = (y, x)
    np.testing.assert_array_equal(goals, [[2, 3], [2, 0]])


@pytest.mark.parametrize(
    "text",
    [
        "type octile\nheight 3\nwidth 4\nmap\n....\n....\n",  # too few rows
        "type octile\nheight 2\nwidth 4\nmap\n....\n...\n",  # short row
        "type octile\nheight 1\nwidth 2\nmap\n.x\n",  # unknown terrain
        "type octile\nheight two\nwidth 2\nmap\n..\n..\n",  # non-integer height
        "type octile\nheight 1\nwidth 2\n..\n",  # no map line
    ],
)
def test_read_movingai_map_malformed(tmp_path, text):
    path = tmp_path / "bad.map"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.map"):
        data.read_movingai_map(path)


@pytest.mark.parametrize(
    "text",
    [
        "0\tm.map\t4\t3\t0\t0\t3\t2\t5.0\n",  # no version line
        "version 1\n0\tm.map\t4\t3\t0\tzero\t3\t2\t5.0\n",  # non-integer coordinate
        "version 1\n0\tm.map\t4\t3\t0\t0\t3\n",  # too few fields
    ],
)
def test_read_movingai_scen_malformed(tmp_path, text):
    path = tmp_path / "bad.scen"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.scen"):
        data.read_movingai_scen(path)
