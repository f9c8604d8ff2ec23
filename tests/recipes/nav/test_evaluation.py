"""Tests for kiln.recipes.nav.evaluation: pooled split metrics, rollouts on a user's MovingAI map, the headline."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from kiln.recipes.nav.data import to_tensors
from kiln.recipes.nav import evaluation
from kiln.recipes.nav.evaluation import evaluate_map, predict_logits, shortest_path_rollout_success, split_metrics
from kiln.recipes.nav.grid import STAY, bfs_distance_field, optimal_action_sets
from kiln.recipes.nav.task import NavTask, RecurrentNavTask


class Oracle(torch.nn.Module):
    """Logits that put all mass on one optimal action per cell (or on a fixed action)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, cells):
        return [self.logits[: len(cells)]]


def test_a_perfect_policy_scores_perfectly(make_split):
    split = to_tensors(make_split())
    first_optimal = split["optimal"].float().argmax(-1)  # an optimal action at every reachable cell
    logits = torch.nn.functional.one_hot(first_optimal, 5).float() * 10
    task = NavTask(Oracle(logits), grid_size=7)
    metrics = split_metrics(task, split)
    assert metrics["optimal_action_accuracy"] == 1.0
    assert metrics["start_optimal_accuracy"] == 1.0
    assert metrics["exact_accuracy"] == 1.0  # the first optimal action is the guide's tie-broken label
    assert metrics["rollout_success"] == 1.0
    assert metrics["rollout_optimality"] == pytest.approx(1.0)


class RecordingPolicy(torch.nn.Module):
    """bf16 logits of a given action per cell; records each batch's size and reports its number as iterations."""

    def __init__(self, action=0):
        super().__init__()
        self.action, self.batches, self.last_iterations = action, [], 0

    def forward(self, cells):
        self.batches.append(len(cells))
        self.last_iterations = 3 * len(self.batches)
        logits = torch.nn.functional.one_hot(torch.full((len(cells), cells[0].numel()), self.action), 5)
        return [logits.to(torch.bfloat16)]


def test_predict_logits_caps_the_cells_per_batch_and_reports_the_most_iterations(make_split, monkeypatch):
    cells = to_tensors(make_split(n=5, size=7))["cells"]
    monkeypatch.setattr(evaluation, "MAX_BATCH_CELLS", 2 * 49 + 10)  # two 7x7 maps per batch
    task = RecurrentNavTask(RecordingPolicy(action=2), 7)
    logits, iterations = predict_logits(task, cells, batch_size=4)
    assert task.model.batches == [2, 2, 1] and iterations == 9
    assert logits.dtype == torch.float32 and logits.shape == (5, 49, 5)
    assert (logits.argmax(-1) == 2).all()
    fixed_depth = NavTask(Oracle(torch.zeros(5, 49, 5)), 7)  # no iteration count
    assert predict_logits(fixed_depth, cells)[1] is None


def test_the_shortest_path_optimum_reaches_every_goal_that_its_moves_lead_to(make_split):
    split = to_tensors(make_split(n=10, size=7))
    assert shortest_path_rollout_success(split) == 1.0
    split["optimal"][0] = False
    split["optimal"][0, :, STAY] = True  # grid 0: the optimum would stay where it is
    assert shortest_path_rollout_success(split) == pytest.approx(0.9)


def test_headline_is_rollout_success_against_the_shortest_path_optimum():
    results = {"split": "test", "rollout_success": 0.93, "shortest_path_rollout_success": 1.0, "loss": 0.2}
    assert evaluation.headline(results) == {"metric": "rollout success", "value": 0.93, "baseline": "shortest path",
                                            "baseline_value": 1.0, "higher_is_better": True}


# 6x6 map: a wall column with a gap, plus a walled-off pocket at the bottom right.
MAP = """type octile
height 6
width 6
map
......
.@@...
..@...
..@.@@
....@.
....@.
"""


class BfsPolicy(torch.nn.Module):
    """A perfect policy computed by BFS from the cell codes: the reference the rollouts must match."""

    def forward(self, cells):
        grids = (cells == 1).numpy().astype(np.uint8)
        goals = np.argwhere(cells.numpy() == 2)[:, 1:]
        optimal = optimal_action_sets(grids, bfs_distance_field(grids, goals), goals)
        return [torch.from_numpy(optimal.reshape(len(cells), -1, 5)).float() * 10]


class StayPolicy(torch.nn.Module):
    def forward(self, cells):
        logits = torch.zeros(len(cells), cells[0].numel(), 5)
        logits[..., 4] = 1
        return [logits]


@pytest.fixture
def map_file(tmp_path):
    path = tmp_path / "room.map"
    path.write_text(MAP)
    return path


def test_scen_pairs_with_unreachable_ones_excluded_and_counted(map_file, tmp_path):
    scen = tmp_path / "room.map.scen"
    # columns: bucket map width height start_x start_y goal_x goal_y optimal_length (x = column, y = row)
    scen.write_text("version 1\n"
                    "0\troom.map\t6\t6\t0\t0\t5\t0\t5\n"      # reachable
                    "0\troom.map\t6\t6\t0\t5\t3\t3\t5\n"      # reachable, around the wall
                    "0\troom.map\t6\t6\t0\t0\t5\t5\t9\n"      # goal in the sealed pocket: unreachable
                    "0\troom.map\t6\t6\t1\t1\t0\t0\t1\n")     # start on a wall
    results = evaluate_map(NavTask(BfsPolicy(), 6), map_file, scen, num_pairs=0)
    assert results["pairs"] == 2
    assert results["excluded_unreachable"] == 1
    assert results["excluded_off_map_or_blocked"] == 1
    assert results["rollout_success"] == 1.0 and results["rollout_optimality"] == pytest.approx(1.0)
    assert results["optimal_action_accuracy"] == 1.0


def test_sampled_pairs_and_a_failing_policy(map_file):
    results = evaluate_map(NavTask(StayPolicy(), 6), map_file, None, num_pairs=50)
    total = results["pairs"] + results["excluded_unreachable"] + results["excluded_start_is_goal"]
    assert total == 50 and results["pairs"] > 0
    assert results["rollout_success"] == 0.0


def test_map_size_must_match_a_fixed_size_model(map_file):
    with pytest.raises(KilnError, match="is 6x6 but this BfsPolicy was trained on 8x8 grids and works only at that size"):
        evaluate_map(NavTask(BfsPolicy(), 8), map_file, None, num_pairs=5)


def test_a_size_agnostic_model_runs_on_a_larger_non_square_map(tmp_path):
    rows = ["." * 13, ".@@@@@@@@@@@.", ".@.........@.", ".@.@@@@@@@.@.", "...@.......@.", "@@@@.@@@@@@@.", "............."]
    path = tmp_path / "wide.map"
    path.write_text(f"type octile\nheight {len(rows)}\nwidth {len(rows[0])}\nmap\n" + "\n".join(rows) + "\n")
    results = evaluate_map(RecurrentNavTask(BfsPolicy(), 8), path, None, num_pairs=60)
    assert results["pairs"] > 40
    assert results["rollout_success"] == 1.0 and results["rollout_optimality"] == pytest.approx(1.0)


def test_malformed_map_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.map"
    bad.write_text("type octile\nheight 2\nwidth 2\nmap\n..\n")
    with pytest.raises(KilnError, match="cannot read MovingAI file"):
        evaluate_map(NavTask(BfsPolicy(), 2), bad, None, num_pairs=5)


def test_kiln_evaluate_map_end_to_end(tiny_config, map_file, tmp_path, capsys):
    import json

    from kiln.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "train.max_epochs=1", "--run-dir", str(run_dir)]) == 0
    test_results = (run_dir / "test_results.json").read_text()
    assert main(["evaluate", str(run_dir), "--map", str(map_file), "--num-pairs", "30"]) == 0
    results = json.loads((run_dir / "report" / "map_room.json").read_text())
    assert results["pairs"] + results["excluded_unreachable"] + results["excluded_start_is_goal"] == 30
    assert 0 <= results["rollout_success"] <= 1
    assert (run_dir / "test_results.json").read_text() == test_results  # the test split's results stay
    assert "map_room" in capsys.readouterr().out


def test_a_scen_whose_pairs_all_miss_the_map_is_an_error_naming_it(map_file, tmp_path):
    scen = tmp_path / "arena.map.scen"  # the pairs of a 512x512 map: none lies on the 6x6 one
    scen.write_text("version 1\n0\tarena.map\t512\t512\t100\t7\t300\t400\t500\n0\tarena.map\t512\t512\t6\t0\t0\t0\t6\n")
    with pytest.raises(KilnError, match=r"none of the 2 start/goal pairs in '.*arena.map.scen' lies on '.*room.map' \(6x6\)"):
        evaluate_map(NavTask(BfsPolicy(), 6), map_file, scen, num_pairs=0)


def test_no_usable_pair_at_all_is_an_error_with_the_reasons(map_file, tmp_path):
    scen = tmp_path / "room.map.scen"  # one pair on a wall, one into the sealed pocket, one with start = goal
    scen.write_text("version 1\n0\troom.map\t6\t6\t1\t1\t0\t0\t1\n0\troom.map\t6\t6\t0\t0\t5\t5\t9\n"
                    "0\troom.map\t6\t6\t0\t0\t0\t0\t0\n")
    with pytest.raises(KilnError, match=r"no start/goal pair in '.*room.map.scen' can be measured on '.*room.map': "
                                        r"1 off the map or on a wall, 1 unreachable, 1 with the start on the goal"):
        evaluate_map(NavTask(BfsPolicy(), 6), map_file, scen, num_pairs=0)


@pytest.mark.parametrize("options, message", [
    ({"num_pairs": 0}, "--num-pairs must be between 1 and 100000, got 0"),
    ({"num_pairs": -3}, "--num-pairs must be between 1 and 100000, got -3"),
    ({"num_pairs": 10**9}, "--num-pairs must be between 1 and 100000, got 1000000000"),
    ({"num_pairs": 5, "scen": "x.scen"}, "--num-pairs samples pairs when there is no --scen; give one of the two"),
    ({"num_pairs": 5, "map": None}, "--num-pairs needs --map"),
], ids=["zero", "negative", "huge", "with-scen", "without-map"])
def test_num_pairs_must_be_a_positive_count_of_sampled_pairs(map_file, options, message):
    from kiln.recipes.nav.config import NavConfig

    options = {"map": map_file, **options}
    with pytest.raises(KilnError, match=message):
        evaluation.evaluate(NavTask(BfsPolicy(), 6), None, NavConfig(), {k: v for k, v in options.items() if v is not None})


def test_kiln_evaluate_refuses_bad_map_flags_in_one_line_and_writes_nothing(tiny_config, map_file, tmp_path, capsys):
    from kiln.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "train.max_epochs=1", "--run-dir", str(run_dir)]) == 0
    off_map = tmp_path / "far.scen"
    off_map.write_text("version 1\n0\tfar.map\t64\t64\t40\t40\t50\t50\t14\n")
    report = sorted(p.name for p in (run_dir / "report").iterdir())
    capsys.readouterr()
    for flags, message in [(["--num-pairs", "0"], "--num-pairs must be between 1 and 100000, got 0"),
                           (["--num-pairs", "-4"], "--num-pairs must be between 1 and 100000, got -4"),
                           (["--scen", str(off_map)], "none of the 1 start/goal pairs in"),
                           (["--scen", str(tmp_path / "missing.scen")], "missing.scen: cannot be read (No such file or directory)")]:
        assert main(["evaluate", str(run_dir), "--map", str(map_file), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kiln: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (run_dir / "report").iterdir()) == report  # no map_*.json half-written or at all


def test_kiln_evaluate_data_refuses_grids_of_another_side_for_a_fixed_size_model(tiny_config, tmp_path, capsys):
    from kiln.cli import main
    from kiln.recipes.nav.data import generate_dataset
    from kiln.recipes.nav.evaluation import data_mismatch

    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "train.max_epochs=1", "--run-dir", str(run_dir)]) == 0
    other = tmp_path / "grid8"
    generate_dataset(other, num_train=16, num_val=16, num_test=16, grid_size=8, obstacle_density=0.2, seed=4)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "6x6 training grids and these grids are 8x8" in err
    assert not (run_dir / "test_results_grid8.json").exists() and not (run_dir / "report_grid8").exists()
    recurrent = SimpleNamespace(model=SimpleNamespace(arch="recurrent"))
    assert data_mismatch(recurrent, {"grid_size": 6}, {"grid_size": 8}) is None  # a convolution runs at any size


def test_sampling_pairs_on_a_map_without_two_free_cells_names_the_map(tmp_path):
    path = tmp_path / "walls.map"
    path.write_text("type octile\nheight 2\nwidth 3\nmap\n@@@\n@.@\n")
    with pytest.raises(KilnError, match=r"walls.map' has fewer than two free cells"):
        evaluate_map(None, path, None, num_pairs=5)
