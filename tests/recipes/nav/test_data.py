"""Tests for kiln.recipes.nav.data: dataset directories, checked against networkx as an independent reference."""

import json

import networkx as nx
import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.recipes.nav import data
from kiln.recipes.nav.grid import bfs_distance_field, canonical_grid_ids, optimal_action_sets, single_action_labels
from kiln.recipes.nav.layouts import random_grids


def test_augment_stacks_eight_consistent_copies():
    rng = np.random.default_rng(8)
    grids, starts, goals = random_grids(10, 6, 0.25, rng)
    dist = bfs_distance_field(grids, goals)
    optimal = optimal_action_sets(grids, dist, goals)
    split = dict(grids=grids, starts=starts, goals=goals, dist=dist, optimal=optimal,
                 action=single_action_labels(optimal, starts))
    big = data.augment_split(split)
    assert set(big) == set(data.SPLIT_KEYS)
    for key, arr in big.items():
        assert arr.shape[0] == 80
        np.testing.assert_array_equal(arr[:10], split[key])  # identity first
    # every copy is a valid sample: labels recomputed from scratch agree
    relabelled = bfs_distance_field(big["grids"], big["goals"])
    np.testing.assert_array_equal(relabelled, big["dist"])
    np.testing.assert_array_equal(big["action"], single_action_labels(big["optimal"], big["starts"]))


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
    ids = canonical_grid_ids(np.concatenate([splits[s]["grids"] for s in data.SPLITS]))
    train_ids, val_ids, test_ids = np.split(ids, [2400, 2450])
    assert not set(test_ids) & (set(train_ids) | set(val_ids))
    assert not set(val_ids) & set(train_ids)
    assert len(set(test_ids)) == 100
    # the first block of augmented train is the un-augmented train set, the rest its symmetries
    base_train = {key: arr[:300] for key, arr in splits["train"].items()}
    for key, arr in data.augment_split(base_train).items():
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
    with pytest.raises(KilnError, match="exists and is not empty; pass another --out or delete it"):
        data.generate_dataset(tmp_path / "a", **kwargs)


def test_a_taken_out_dir_is_refused_before_any_grid_is_drawn(tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    monkeypatch.setattr(data, "draw_splits", lambda *args, **kwargs: pytest.fail("drew grids for a taken --out"))
    with pytest.raises(KilnError, match="taken' exists and is not empty"):
        data.generate_dataset(tmp_path / "taken", num_train=10, num_val=5, num_test=5, grid_size=5)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


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


def nav_config(data_dir):
    from kiln.recipes.nav.config import NavConfig

    return NavConfig.model_validate({"recipe": "nav", "data": {"dir": str(data_dir), "generate": None}})


@pytest.fixture
def small_dataset(tmp_path):
    out = tmp_path / "ds"
    data.generate_dataset(out, num_train=20, num_val=5, num_test=5, grid_size=5, seed=1)
    return out


def test_a_truncated_or_foreign_split_file_is_one_line_naming_it(small_dataset):
    raw = (small_dataset / "train.npz").read_bytes()
    for damaged in (raw[: len(raw) // 2], raw[:100], b"", b"not an archive", np.zeros(3).tobytes()):
        (small_dataset / "train.npz").write_bytes(damaged)
        with pytest.raises(KilnError, match=r"train.npz.*; regenerate the dataset with kiln data nav") as err:
            data.load_data(nav_config(small_dataset))
        assert "\n" not in str(err.value)
    np.save(small_dataset / "train.npy", np.zeros(3))  # one array, not an archive of a split
    (small_dataset / "train.npy").rename(small_dataset / "train.npz")
    with pytest.raises(KilnError, match=r"train.npz: one array, not an .npz archive"):
        data.load_data(nav_config(small_dataset))


@pytest.mark.parametrize("key, value, message", [
    ("grids", np.zeros((5, 25), np.uint8), r"'grids' has shape \[5, 25\], not \[N, G, G\]"),
    ("grids", np.zeros((5, 5, 6), np.uint8), r"'grids' has shape \[5, 5, 6\], not \[N, G, G\]"),
    ("grids", np.zeros((0, 5, 5), np.uint8), r"'grids' has shape \[0, 5, 5\], not \[N, G, G\]"),
    ("starts", np.zeros((5, 3), np.int64), r"'starts' has shape \[5, 3\], expected \[5, 2\]"),
    ("optimal", np.zeros((5, 5, 5, 4), bool), r"'optimal' has shape \[5, 5, 5, 4\], expected \[5, 5, 5, 5\]"),
    ("action", np.zeros(4, np.int64), r"'action' has shape \[4\], expected \[5\]"),
    ("dist", np.zeros((5, 5, 5), np.float32), r"'dist' holds float32, not integers"),
    ("grids", np.full((5, 5, 5), 7, np.uint8), r"'grids' holds values 7..7, expected 0..1"),
    ("goals", np.full((5, 2), 5, np.int64), r"'goals' holds values 5..5, expected 0..4"),
    ("starts", np.full((5, 2), -1, np.int64), r"'starts' holds values -1..-1, expected 0..4"),
    ("dist", np.full((5, 5, 5), 30000, np.int16), r"'dist' holds values 30000..30000, expected -1..24"),
    ("action", np.full(5, 9, np.int64), r"'action' holds values 9..9, expected 0..4"),
], ids=["flat", "not-square", "empty", "starts", "optimal", "action-length", "float-dist", "grid-values", "goal-off-grid",
        "start-negative", "dist-huge", "action-value"])
def test_a_split_of_the_wrong_shape_or_range_is_one_line_naming_file_and_key(small_dataset, key, value, message):
    arrays = data.load_split(small_dataset, "val")
    np.savez(small_dataset / "val.npz", **{**arrays, key: value})
    with pytest.raises(KilnError, match=rf"val.npz: {message}"):
        data.load_data(nav_config(small_dataset))


def test_dataset_json_must_give_the_grid_size_of_the_splits(small_dataset):
    info = json.loads((small_dataset / "dataset.json").read_text())
    for grid_size in (8, "5", None, True):
        (small_dataset / "dataset.json").write_text(json.dumps({**info, "grid_size": grid_size}))
        with pytest.raises(KilnError, match=rf"dataset.json' says grid_size {grid_size!r} but the splits hold grids of side 5"):
            data.load_data(nav_config(small_dataset))
    test = data.load_split(small_dataset, "test")  # cut to 4x4: labels wrong, but in range
    np.savez(small_dataset / "test.npz", grids=test["grids"][:, :4, :4], starts=np.minimum(test["starts"], 3),
             goals=np.minimum(test["goals"], 3), dist=np.clip(test["dist"][:, :4, :4], -1, 15),
             optimal=test["optimal"][:, :4, :4], action=test["action"])
    (small_dataset / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(KilnError, match=r"splits hold grids of side 5 \(train\), 5 \(val\), 4 \(test\)"):
        data.load_data(nav_config(small_dataset))
