"""Layouts: random grids, mazes, rooms and map windows, checked with networkx."""

import networkx as nx
import numpy as np
import pytest

from kiln.recipes.nav import layouts
from kiln.recipes.nav.grid import bfs_distance_field
from kiln.recipes.nav.movingai import read_map_folder


def free_graph(grid):
    """The 4-connected graph of a grid's free cells (networkx, independent of kiln's BFS)."""
    graph = nx.grid_2d_graph(*grid.shape)
    graph.remove_nodes_from([tuple(cell) for cell in np.argwhere(grid == 1)])
    return graph


def test_random_grids_starts_goals_valid():
    rng = np.random.default_rng(4)
    grids, starts, goals = layouts.random_grids(200, 8, 0.35, rng)
    assert grids.shape == (200, 8, 8) and grids.dtype == np.uint8
    assert starts.dtype == np.int64 and goals.shape == (200, 2)
    for grid, start, goal in zip(grids, starts, goals):
        assert grid[tuple(start)] == 0 and grid[tuple(goal)] == 0
        assert tuple(start) != tuple(goal)
        assert nx.has_path(free_graph(grid), tuple(start), tuple(goal))


@pytest.mark.parametrize("layout", ["maze", "rooms"])
@pytest.mark.parametrize("size", [8, 11, 16, 33])
def test_every_free_cell_reaches_the_goal(layout, size):
    grids, starts, goals = layouts.layout_samples(layout, 12, size, np.random.default_rng(size))
    assert grids.shape == (12, size, size)
    for grid, start, goal in zip(grids, starts, goals):
        graph = free_graph(grid)
        assert nx.is_connected(graph)
        reach = nx.single_source_shortest_path_length(graph, tuple(goal))
        assert len(reach) == graph.number_of_nodes()
        assert reach[tuple(start)] > 0
    # kiln's BFS agrees: no free cell is unreachable
    dist = bfs_distance_field(grids, goals)
    assert ((dist >= 0) == (grids == 0)).all()


@pytest.mark.parametrize("size", [9, 17, 25])
def test_mazes_on_odd_sides_are_perfect(size):
    """One path between any two free cells: the free cells form a tree that covers every maze cell."""
    grids = layouts.maze_layouts(5, size, np.random.default_rng(0))
    for grid in grids:
        graph = free_graph(grid)
        assert nx.is_tree(graph)
        assert graph.number_of_nodes() == ((size + 1) // 2) ** 2 * 2 - 1  # cells plus one opening per tree edge


def test_rooms_have_loops_sometimes_and_walls_between_rooms():
    grids = layouts.room_layouts(40, 24, np.random.default_rng(1))
    trees = [nx.is_tree(free_graph(grid)) for grid in grids]
    assert not all(trees)  # extra doors make several routes
    assert 0.1 < grids.mean() < 0.35  # one-cell walls between rooms 3 to 7 wide


def test_spanning_trees_of_many_lattices_of_several_sizes():
    rng = np.random.default_rng(2)
    rows = np.array([2, 5, 16, 3] + [16] * 200)  # 200 lattices of 16x16: more nodes than int32 indices squared
    cols = np.array([7, 5, 16, 1] + [16] * 200)
    right, down = layouts.random_spanning_trees(rows, cols, rng)
    for i in [0, 1, 2, 3, len(rows) - 1]:
        graph = nx.Graph()
        graph.add_nodes_from((r, c) for r in range(rows[i]) for c in range(cols[i]))
        graph.add_edges_from(((r, c), (r, c + 1)) for r, c in np.argwhere(right[i]))
        graph.add_edges_from(((r, c), (r + 1, c)) for r, c in np.argwhere(down[i]))
        assert nx.is_tree(graph) and graph.number_of_nodes() == rows[i] * cols[i]
    assert (right.sum((1, 2)) + down.sum((1, 2)) == rows * cols - 1).all()


def write_map(path, rows):
    path.write_text(f"type octile\nheight {len(rows)}\nwidth {len(rows[0])}\nmap\n" + "\n".join(rows) + "\n")


def test_map_windows_are_cut_from_the_maps(tmp_path):
    rng = np.random.default_rng(3)
    big = rng.random((20, 30)) < 0.3
    write_map(tmp_path / "a.map", ["".join("@" if wall else "." for wall in row) for row in big])
    write_map(tmp_path / "small.map", ["....", "...."])  # too small for a 10x10 window: never used
    shares, maps_dir = layouts.parse_layouts(f"maps:{tmp_path}")
    assert shares == {"maps": 1.0} and maps_dir == tmp_path
    maps = read_map_folder(maps_dir)
    assert len(maps) == 2
    windows = layouts.map_windows(maps, 50, 10, rng)
    views = np.lib.stride_tricks.sliding_window_view(big.astype(np.uint8), (10, 10)).reshape(-1, 10, 10)
    for window in windows:
        assert (views == window).all(axis=(1, 2)).any()
    with pytest.raises(ValueError, match="no map is at least 40x40"):
        layouts.map_windows(maps, 5, 40, rng)


def test_parse_layouts():
    assert layouts.parse_layouts("random=2,maze=1,rooms=1")[0] == {"random": 0.5, "maze": 0.25, "rooms": 0.25}
    assert layouts.parse_layouts("maze") == ({"maze": 1.0}, None)
    for spec, message in [("mazes", "unknown layout 'mazes'"), ("maze=x", "weight 'x'"), ("maze=0", "one positive weight"),
                          ("maze,maze", "one positive weight")]:
        with pytest.raises(ValueError, match=message):
            layouts.parse_layouts(spec)
    with pytest.raises(ValueError, match="does not exist"):
        read_map_folder("/no/such/dir")


def test_kiln_data_nav_flags_are_checked(tmp_path, capsys):
    from kiln.cli import main

    for flags, message in [(["--layout", "mazes"], "--layout: Value error, unknown layout 'mazes'"),
                           (["--eval-sizes", "8,x"], "--eval-sizes: Input should be a valid integer"),
                           (["--min-grid-size", "20", "--grid-size", "16"], "min_grid_size 20 is larger than grid_size 16"),
                           (["--layout", "maps:/no/such/dir"], "kiln data nav: maps folder '/no/such/dir' does not exist")]:
        assert main(["data", "nav", "--out", str(tmp_path / "ds"), *flags]) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    assert main(["data", "nav", "--out", str(tmp_path / "ds"), "--layout", "rooms", "--grid-size", "10", "--num-train", "20",
                 "--num-val", "5", "--num-test", "5", "--eval-sizes", "10,15", "--eval-grids", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "ds" / "eval").iterdir()) == ["rooms_10.npz", "rooms_15.npz"]
