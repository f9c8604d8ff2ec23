"""kiln sweep end to end, with real worker processes on one journal study, killed with SIGKILL."""

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kiln.cli import main
from kiln.errors import KilnError
from kiln.sweep.study import open_sweep

GRID = {"model.dim": [8, 16], "model.depth": [1, 2]}
POINTS = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def kiln(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kiln", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def trials(sweep_dir: Path):
    """The sweep's trials ([] while kiln sweep is still creating it)."""
    if not (sweep_dir / "sweep.json").is_file() or not (sweep_dir / "study.journal").is_file():
        return []
    try:
        return open_sweep(sweep_dir)[1].get_trials(deepcopy=False)
    except KilnError:  # the study is being created
        return []


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 600.0, poll_s: float = 0.5):
    """condition()'s first true value while `process` (kiln sweep) runs; its console if it stops first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"kiln sweep exited ({process.returncode}) first:\n{process.stdout.read()}")
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s")


def running_with_checkpoint(sweep_dir: Path):
    """A RUNNING trial whose run has written its first checkpoint and has at least two epochs still to train (so
    killing its worker now is mid-trial, not while it evaluates)."""
    for t in trials(sweep_dir):
        worker, run_dir = t.user_attrs.get("worker"), t.user_attrs.get("run_dir")
        if t.state.name != "RUNNING" or not worker or not run_dir:
            continue
        try:
            status = json.loads((sweep_dir / run_dir / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if (status.get("state") == "running" and status["epoch"] <= status["max_epochs"] - 2
                and (sweep_dir / run_dir / "checkpoints" / "last.ckpt").is_file()):
            return t
    return None


def assert_every_point_finished_once(sweep_dir: Path, points: list[dict]) -> list:
    """Each grid point has exactly one finished trial, with its parameters; no point is missing."""
    finished = [t for t in trials(sweep_dir) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["point"] for t in finished) == list(range(len(points)))
    for t in finished:
        assert t.params == points[t.user_attrs["point"]]
    return finished


# Long enough (6 steps an epoch) that a trial is still training when a poll every 0.5 s looks, on an idle machine too
KILLED_EPOCHS = 16


def grid_args(config, out, *extra, grid=GRID, epochs=3):
    return ["sweep", str(config), f"train.max_epochs={epochs}", "--out", str(out), *extra, "--grid",
            *(f"{k}={','.join(map(str, v))}" for k, v in grid.items())]


def test_three_workers_run_every_point_once_though_one_is_killed_mid_trial(sweep_config, tmp_path, stop_after):
    out = tmp_path / "sweep"
    launcher = kiln(*grid_args(sweep_config, out, "--workers", "3", epochs=KILLED_EPOCHS))
    stop_after.append(launcher)
    victim = wait_for(lambda: running_with_checkpoint(out), launcher)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    console = launcher.communicate(timeout=600)[0]
    assert launcher.returncode == 0, console
    finished = assert_every_point_finished_once(out, POINTS)
    everything = trials(out)
    assert everything[victim.number].state.name == "FAIL"
    rerun = next(t for t in everything if t.user_attrs.get("retry_of") == victim.number)
    # the re-run has the killed trial's parameters, finished, and continued its run directory from its checkpoint
    assert rerun in finished and rerun.params == POINTS[victim.user_attrs["point"]]
    assert rerun.user_attrs["run_dir"] == victim.user_attrs["run_dir"]
    assert "Resuming" in (out / victim.user_attrs["run_dir"] / "train.log").read_text()
    assert len(everything) == len(POINTS) + 1  # the queue plus the one re-run: nothing ran twice
    assert f"Trial {victim.number}: its worker (pid {victim.user_attrs['worker']['pid']}) is gone" in console
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["trial"] for row in rows] == [str(n) for n in range(len(everything))]
    finished_points = [row["point"] for row in rows if row["state"] == "finished"]
    assert sorted(finished_points, key=int) == [str(p) for p in range(len(POINTS))]  # no duplicates, no gaps
    assert {p.name for p in (out / "plots").iterdir()} == {"optimization_history.png", "param_importances.png",
                                                          "parallel_coordinate.png", "heat_map.png"}
    summary = json.loads(console.strip().splitlines()[-1])
    assert (summary["finished"], summary["failed"], summary["waiting"], summary["running"]) == (4, 1, 0, 0)
    sweep, study = open_sweep(out)
    best = study.best_trial  # by the nav config's train.monitor and train.mode
    assert best in finished and best.value == (max if sweep.direction == "max" else min)(t.value for t in finished)
    assert f"Best: trial {best.number} " in console and f"kiln export {out / best.user_attrs['run_dir']}" in console
    # trial run directories are ordinary runs
    assert main(["compare", str(out / "trial_0000"), str(out / "trial_0001"), "--out", str(tmp_path / "c.png")]) == 0


def test_resume_after_every_process_was_killed_finishes_the_rest(sweep_config, tmp_path, stop_after, capsys):
    out = tmp_path / "sweep"
    launcher = kiln(*grid_args(sweep_config, out, "--workers", "2", epochs=KILLED_EPOCHS), start_new_session=True)
    stop_after.append(launcher)
    wait_for(lambda: any(t.state.name == "COMPLETE" for t in trials(out)) and running_with_checkpoint(out), launcher)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both workers
    launcher.wait()
    before = trials(out)
    assert sum(t.state.name == "COMPLETE" for t in before) < len(POINTS)
    assert any(t.state.name == "RUNNING" for t in before)  # left running by the dead
    resumed = kiln("sweep", "--resume", str(out), "--workers", "2")
    stop_after.append(resumed)
    console = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, console
    assert_every_point_finished_once(out, POINTS)
    assert main(["sweep", "--status", str(out)]) == 0
    assert '"finished": 4' in capsys.readouterr().out


def test_a_schema_error_exits_2_before_anything_is_written(sweep_config, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(grid_args(sweep_config, out, grid={**GRID, "model.dropout": [0.1, 1.5]})) == 2
    assert capsys.readouterr().err.strip() == \
        "kiln: error: --grid model.dropout=1.5: model.dropout: Input should be less than 1 (got 1.5)"
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {log_uniform: [1.0e-4, 1.0e-2]}\nmodel.dim: {choice: [8, 0]}\n")
    assert main(["sweep", str(sweep_config), "--space", str(space), "--trials", "4", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == \
        "kiln: error: space entry model.dim=0: model.dim: Input should be greater than 0 (got 0)"
    assert main(grid_args(sweep_config, out, "--storage", f"sqlite:///{tmp_path}/no/such/dir.db")) == 2
    assert "cannot be opened" in capsys.readouterr().err
    assert not out.exists()
