"""Watching runs from another process: `kiln status`, `kiln logs --follow` (returns when the run ends) and `kiln tb`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from kiln.cli import main
from kiln.engine.fit import fit
from kiln.engine.monitor import follow_log, is_live, read_status, tensorboard_command
from kiln.engine.runs import print_status
from kiln.recipes import load_recipe_config


def test_status_and_logs(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe, cfg = load_recipe_config(tiny_config, ["train.max_epochs=1"])
    fit(cfg, recipe, run_dir)
    capsys.readouterr()
    print_status([run_dir])
    assert "finished" in capsys.readouterr().out
    follow_log(run_dir, follow=True)  # returns at once: the run is not running
    assert "Epoch 1/1" in capsys.readouterr().out


def test_logs_follow_returns_when_the_run_in_another_process_ends(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "kiln", "train", str(tiny_config), "--run-dir", str(run_dir),
                                "train.max_epochs=4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "train.log").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_live(run_dir)  # the run is under way when the following starts
        follower = threading.Thread(target=follow_log, args=(run_dir, True, 0.1))
        follower.start()
        follower.join(timeout=180)
        assert not follower.is_alive()
        assert read_status(run_dir)["state"] == "finished"
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        process.kill()
    out = capsys.readouterr().out
    assert out == (run_dir / "train.log").read_text()  # every line, the last ones included
    assert "Epoch 4/4" in out


def test_tb_runs_tensorboard_on_the_runs_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    command = tensorboard_command(tmp_path / "runs")
    assert command[-2:] == ["--logdir", str(tmp_path / "runs")]
    version = subprocess.run([*command[:-2], "--version_tb"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip()  # the command is a working tensorboard

    started = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: started.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert main(["tb"]) == 0
    assert started == [tensorboard_command(tmp_path / "runs")[:-1] + ["runs"]]
    assert f"Running: {' '.join(started[0])}" in capsys.readouterr().out


def test_tb_without_tensorboard_prints_the_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["tb", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"kiln: error: tensorboard is not installed; run: pip install tensorboard "
                                               f"&& tensorboard --logdir {tmp_path}")
    assert main(["tb", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
