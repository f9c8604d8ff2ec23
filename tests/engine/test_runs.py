"""`kiln runs` and the states it (and `kiln status`) shows: running -> finished / failed / interrupted / dead, runs of
several recipes and a phased run in one table, filters, sorting and --json."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from typing import Literal

import pytest
import yaml

from kiln.cli import main
from kiln.engine.batches import TensorBatches
from kiln.engine.callbacks import Callback
from kiln.engine.monitor import read_status
from kiln.engine.runs import print_status
from kiln.engine.runs import find_runs, list_runs, run_summary, state_label
from kiln.errors import KilnError

PHASES = [{"name": "warm", "train": {"max_epochs": 2}}, {"name": "fine", "train": {"max_epochs": 1, "lr": 0.01}}]


class StateProbe(Callback):
    """What read_status says from inside the run, at each validation."""

    def __init__(self):
        self.states = []

    def on_validation(self, run, row, improved):
        self.states.append(read_status(run.run_dir)["state"])


def quad_recipe(toy):
    """The toy under another recipe name, with a headline (its test MSE against predicting zero, 1.0 here)."""
    class QuadConfig(toy.config):
        recipe: Literal["quad"] = "quad"

    def headline(results):
        return {"metric": "test MSE", "value": results["mse"], "baseline": "zero", "baseline_value": 1.0, "higher_is_better": False}

    return dataclasses.replace(toy, name="quad", config=QuadConfig, headline=headline)


def quad_config(toy, **train):
    return quad_recipe(toy).config.model_validate({"name": train.pop("name", "quad"), "train": {
        "batch_size": 16, "max_epochs": 2, "lr": 0.05, "optimizer": "sgd", "momentum": 0.0, "loggers": [], "threads": 1,
        "precision": "32", **train}})


KILL_ME = """
import json, sys, time
from datetime import datetime
from pathlib import Path
from kiln.engine.rundir import RunLock
run = Path(sys.argv[1])
RunLock.acquire(run)
(run / "status.json").write_text(json.dumps({"state": "running", "epoch": 1, "max_epochs": 9, "pid": __import__("os").getpid(),
                                            "heartbeat": datetime.now().isoformat(timespec="seconds")}))
print("running", flush=True)
time.sleep(60)
"""


def test_a_run_goes_from_running_to_finished_failed_interrupted_or_dead(toy_cfg, run_toy, tmp_path, monkeypatch):
    probe = StateProbe()
    _, finished = run_toy("finished", toy_cfg(), callbacks=(probe,))
    assert probe.states == ["running"] * 3 and read_status(finished)["state"] == "finished"

    with pytest.raises(KilnError, match="non-finite"):
        run_toy("failed", toy_cfg(model={"poison_call": 6}))
    failed = read_status(tmp_path / "failed")
    assert failed["state"] == "failed" and "non-finite" in failed["error"]

    original = TensorBatches.epoch

    def interrupting(self, epoch=0, start=0):  # a Ctrl-C during epoch 2
        for i, batch in enumerate(original(self, epoch, start), start=start):
            if self.shuffle and epoch == 1 and i == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(TensorBatches, "epoch", interrupting)
    assert run_toy("interrupted", toy_cfg())[0] == {"state": "interrupted"}
    monkeypatch.setattr(TensorBatches, "epoch", original)
    assert read_status(tmp_path / "interrupted")["state"] == "interrupted"

    killed = tmp_path / "killed"  # a training process killed with -9: status.json still says running
    killed.mkdir()
    process = subprocess.Popen([sys.executable, "-c", KILL_ME, str(killed)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "running"
    assert read_status(killed)["state"] == "running"
    process.kill()
    process.wait()
    status = read_status(killed)
    assert status["state"] == "dead" and status["was"] == "running"

    orphan = tmp_path / "orphan"  # no lock file (an older kiln): a fresh heartbeat but its pid is gone
    orphan.mkdir()
    (orphan / "status.json").write_text(json.dumps({"state": "evaluating", "pid": process.pid,
                                                    "heartbeat": datetime.now().isoformat(timespec="seconds")}))
    assert read_status(orphan)["state"] == "dead"

    rows = {row["run"].rsplit("/", 1)[1]: row for row in list_runs(tmp_path)}
    assert {name: row["state"] for name, row in rows.items()} == {
        "finished": "finished", "failed": "failed", "interrupted": "interrupted", "killed": "dead", "orphan": "dead"}
    assert rows["killed"]["was"] == "running" and rows["failed"]["error"] == failed["error"]
    assert [r["run"] for r in list_runs(tmp_path, state="dead")] == [str(killed), str(orphan)]


def test_status_names_a_dead_run_as_runs_does(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 2 ** 22 + 12345, "epoch": 2, "max_epochs": 5,
                                                 "heartbeat": datetime.now().isoformat(timespec="seconds")}))
    print_status([run])
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table's cells, wrapped or not
    assert "dead (was" in out and "2/5" in out
    row = run_summary(run)
    assert row["state"] == "dead" and state_label(row, resume_hint=True) == f"dead (was running; kiln train --resume {run})"


def test_runs_lists_three_recipes_and_a_phased_run_in_one_table(toy, toy_cfg, run_toy, tiny_config, tmp_path, capsys):
    quad = quad_recipe(toy)
    for folder in ("toy", "quad"):
        (tmp_path / folder).mkdir()
    run_toy("toy/plain", toy_cfg(max_epochs=2))
    run_toy("toy/phased", toy_cfg(phases=PHASES))
    _, quad_good = run_toy("quad/good", quad_config(toy, lr=0.05), recipe=quad)
    _, quad_slow = run_toy("quad/slow", quad_config(toy, lr=0.002, name="slow"), recipe=quad)
    assert main(["train", str(tiny_config), "--run-dir", str(tmp_path / "nav" / "tiny"), "train.max_epochs=1"]) == 0
    (tmp_path / "nav" / ".tiny.tmp-x").mkdir()  # a temporary is not a run
    (tmp_path / "nav" / ".tiny.tmp-x" / "status.json").write_text("{}")
    capsys.readouterr()

    from kiln.recipes import get_recipe

    recipes = {"quad": quad, "nav": get_recipe("nav"), "toy": toy}
    assert [p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path)] == [
        "nav/tiny", "quad/good", "quad/slow", "toy/phased", "toy/plain"]  # the phased run once, not its phase_K
    rows = {r["run"]: r for r in list_runs(tmp_path, recipes)}
    assert {r["recipe"] for r in rows.values()} == {"nav", "quad", "toy"}
    phased = rows[str(tmp_path / "toy" / "phased")]
    assert phased["phase"] == "2/2" and phased["phase_name"] == "fine" and phased["state"] == "finished"
    assert phased["epoch"] == 1 and phased["max_epochs"] == 1  # phase 2's own epochs

    good = rows[str(quad_good)]
    mse = json.loads((quad_good / "test_results.json").read_text())["mse"]
    assert good["headline"] == {"metric": "test MSE", "value": mse, "baseline": "zero", "baseline_value": 1.0,
                                "higher_is_better": False}
    assert good["test"] == {"mse": mse} and good["monitor"] == "val_loss"
    status = json.loads((quad_good / "status.json").read_text())
    assert good["best"] == status["best"] and good["best_epoch"] == status["best_epoch"] and good["epoch"] == 2
    started = json.loads((quad_good / "run.json").read_text())["invocations"][0]["started"]
    assert good["started"] == started
    assert good["duration_s"] == (datetime.fromisoformat(status["heartbeat"]) - datetime.fromisoformat(started)).total_seconds()
    assert rows[str(tmp_path / "toy" / "plain")]["headline"] is None  # the toy recipe has no headline

    nav = rows[str(tmp_path / "nav" / "tiny")]
    nav_results = json.loads((tmp_path / "nav" / "tiny" / "test_results.json").read_text())
    assert nav["headline"] == get_recipe("nav").headline(nav_results)

    # sorted by the headline (lower MSE is better: first), and by a test metric, reversed
    by_headline = [r["run"] for r in list_runs(tmp_path / "quad", recipes, sort="headline")]
    slow_mse = json.loads((quad_slow / "test_results.json").read_text())["mse"]
    assert by_headline == ([str(quad_good), str(quad_slow)] if mse < slow_mse else [str(quad_slow), str(quad_good)])
    assert [r["run"] for r in list_runs(tmp_path / "quad", recipes, sort="-mse")] == by_headline[::-1]
    assert [r["recipe"] for r in list_runs(tmp_path, recipes, recipe="quad")] == ["quad", "quad"]
    with pytest.raises(KilnError, match="--sort msee: not a column or test metric of these runs; choose one of: .*mse"):
        list_runs(tmp_path, recipes, sort="msee")

    assert main(["runs", str(tmp_path), "--json", "--recipe", "toy"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in listed] == [str(tmp_path / "toy" / "phased"), str(tmp_path / "toy" / "plain")]
    assert main(["runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for text in ("nav/tiny", "toy/phased", "1/1 (phase 2/2)", "finished", nav["headline"]["metric"]):
        assert text in table
    assert main(["runs", str(tmp_path), "--recipe", "navv"]) == 2
    assert "unknown recipe 'navv'; available:" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_damaged_run_is_a_row_not_a_crash(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "status.json").write_text('{"state": "runn')
    (tmp_path / "bad" / "config.yaml").write_text(yaml.safe_dump({"recipe": "toy", "name": "bad"}))
    [row] = list_runs(tmp_path)
    assert row["state"] == "damaged" and "status.json' is damaged" in row["error"] and row["name"] == "bad"
