"""The run directory's lifecycle: the lock, --overwrite that deletes only kiln runs, a start that fails on bad input
and leaves nothing behind, a run killed while evaluating, and dead runs named as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from kiln.cli import main
from kiln.engine.monitor import read_status
from kiln.engine.rundir import LOCK, RunLock, lock_held
from kiln.errors import KilnError


def files_in(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_overwrite_refuses_a_directory_that_is_not_a_kiln_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "thesis.tex").write_text("precious")
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "--overwrite"]) == 2
    assert "is not a kiln run (no status.json or run.json), so --overwrite will not delete it" in capsys.readouterr().err
    assert files_in(run_dir) == ["thesis.tex"]


def test_overwrite_never_deletes_the_dataset(tiny_config, tiny_data_dir, capsys):
    before = files_in(tiny_data_dir)
    assert main(["train", str(tiny_config), "--run-dir", str(tiny_data_dir), "--overwrite"]) == 2
    assert "is not a kiln run" in capsys.readouterr().err
    assert files_in(tiny_data_dir) == before


def test_a_start_that_fails_on_bad_data_leaves_nothing(tiny_config, tmp_path, capsys):
    config = yaml.safe_load(tiny_config.read_text())
    config["data"]["dir"] = str(tmp_path / "no-such-data")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "runs" / "new"
    assert main(["train", str(bad), "--run-dir", str(run_dir)]) == 2
    assert "does not exist; make it with: kiln data nav" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nor the parent it would have made
    # the retry needs no --overwrite
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=1"]) == 0


def test_overwrite_with_bad_data_keeps_the_old_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=1"]) == 0
    before = {p: (run_dir / p).read_bytes() for p in files_in(run_dir) if (run_dir / p).is_file()}
    config = yaml.safe_load(tiny_config.read_text())
    config["data"]["dir"] = str(tmp_path / "gone")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert main(["train", str(bad), "--run-dir", str(run_dir), "--overwrite"]) == 2
    capsys.readouterr()
    after = {p: (run_dir / p).read_bytes() for p in files_in(run_dir) if (run_dir / p).is_file()}
    assert after == before


def test_an_unknown_monitor_is_found_before_training(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.monitor=val_rollout_sucess"]) == 2
    err = capsys.readouterr().err
    assert "train.monitor 'val_rollout_sucess' is not a metric of this nav task; choose one of: val_loss" in err
    assert "Epoch 1" not in err and not run_dir.exists()


def test_a_run_dir_under_a_file_and_an_unwritable_one_are_refused(tiny_config, tmp_path, capsys):
    (tmp_path / "notes").write_text("x")
    assert main(["train", str(tiny_config), "--run-dir", str(tmp_path / "notes" / "run")]) == 2
    assert "'" + str(tmp_path / "notes") + "' is a file" in capsys.readouterr().err
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "readonly"
    locked.mkdir(mode=0o555)
    assert main(["train", str(tiny_config), "--run-dir", str(locked / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_the_lock_lets_one_process_in_and_is_taken_over_when_its_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kiln.engine.rundir import RunLock; "
                               "RunLock.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_held(tmp_path) is True
        with pytest.raises(KilnError, match=f"in use by a running kiln \\(pid {holder.pid} on "):
            RunLock.acquire(tmp_path, wait_s=0.1)
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the kernel drops the lock
        holder.wait()
    assert (tmp_path / LOCK).is_file() and lock_held(tmp_path) is False
    lock = RunLock.acquire(tmp_path)
    assert lock.taken_over().startswith(f"Took over the lock of {tmp_path}: its holder (pid {holder.pid}")
    lock.release()
    assert lock_held(tmp_path) is None  # released: no lock file left


def test_two_trainings_started_at_once_into_one_run_dir_one_refuses(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "kiln", "train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=2"]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    outcomes = sorted([(p.wait(timeout=120), p.stderr.read()) for p in (first, second)])
    assert outcomes[0][0] == 0
    assert outcomes[1][0] == 2 and ("in use by a running kiln" in outcomes[1][1] or "is not empty" in outcomes[1][1])
    log = (run_dir / "train.log").read_text()
    assert log.count("Epoch 2/2") == 1 and log.count("Precision:") == 1  # one run's lines, not two interleaved


KILLED_WHILE_EVALUATING = """
import os, signal, sys
from kiln.recipes import get_recipe
recipe = get_recipe("nav")
object.__setattr__(recipe, "evaluate", lambda *args: os.kill(os.getpid(), signal.SIGKILL))
from kiln.cli import main
main(["train", sys.argv[1], "--run-dir", sys.argv[2], "train.max_epochs=1"])
"""


def test_a_run_killed_while_evaluating_is_dead_and_resume_finishes_it(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_EVALUATING, str(tiny_config), str(run_dir)], capture_output=True)
    assert killed.returncode == -9
    status = read_status(run_dir)
    assert status["state"] == "dead" and status["was"] == "evaluating"
    assert not (run_dir / "test_results.json").exists()
    assert main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "had finished but its evaluation had not: evaluating" in out and "Took over the lock" in out
    assert read_status(run_dir)["state"] == "finished"
    assert json.loads((run_dir / "test_results.json").read_text())["split"] == "test"
    assert main(["train", "--resume", str(run_dir)]) == 2  # now there is nothing left to do


def test_ctrl_c_while_evaluating_marks_the_run_interrupted(tiny_config, tmp_path):
    from kiln.recipes import get_recipe

    def stopped(*args):
        raise KeyboardInterrupt

    recipe = get_recipe("nav")
    original = recipe.evaluate
    object.__setattr__(recipe, "evaluate", stopped)
    try:
        assert main(["train", str(tiny_config), "--run-dir", str(tmp_path / "run"), "train.max_epochs=1"]) == 130
    finally:
        object.__setattr__(recipe, "evaluate", original)
    status = read_status(tmp_path / "run")
    assert status["state"] == "interrupted" and "kiln train --resume evaluates" in status["note"]
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert read_status(tmp_path / "run")["state"] == "finished"


def test_a_damaged_status_file_is_one_line(tmp_path):
    (tmp_path / "status.json").write_text('{"state": "runn')
    with pytest.raises(KilnError, match="status.json' is damaged"):
        read_status(tmp_path)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_fails_the_run(tiny_config, tmp_path, monkeypatch, capsys):
    import errno

    run_dir = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("kind") == "training-state":
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 2's best.ckpt: part of the file, then the disk is full
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kiln: error: could not write '{run_dir / 'checkpoints' / 'best.ckpt'}' (No space left on device); free some disk space"
    status = read_status(run_dir)
    assert status["state"] == "failed" and "No space left on device" in status["error"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no .tmp left
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # epoch 1's, whole
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert read_status(run_dir)["state"] == "finished"
