import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kiln.engine import devices
from kiln.engine.batches import TensorBatches
from kiln.engine.media import make_loggers
from kiln.engine.monitor import read_status
from kiln.engine.evaluate import evaluate_run
from kiln.engine.fit import fit
from kiln.errors import KilnError
from kiln.recipes import get_recipe, load_recipe_config

EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+) - Train Loss: [\d.]+, Train Acc: [\d.]+ Val Loss: [\d.]+, Val Acc: [\d.]+( \*)?$")


def load_config(config_path, overrides=()):
    return load_recipe_config(config_path, list(overrides))[1]


def train(config_path, run_dir, overrides=(), **kwargs):
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe, cfg = load_recipe_config(config_path, list(overrides))
    return fit(cfg, recipe, run_dir, **kwargs)


def resume(run_dir, overrides=()):
    recipe, cfg = load_recipe_config(run_dir / "config.yaml", list(overrides))
    return fit(cfg, recipe, run_dir, resume=True)


def test_run_directory_layout(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    results = train(tiny_config, run_dir, ["train.loggers=[tensorboard, csv]", "train.checkpoint_every_n_epochs=2"])
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith("events.")}
    assert {"config.yaml", "status.json", "train.log", "history.csv", "history.json", "best_model.pt", "final_model.pt",
            "test_results.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "checkpoints/epoch_002.ckpt",
            "report/rollouts.png", "report/learning_curves.png", "report/metrics.json", "report/report.md",
            "csv/metrics.csv"} <= files
    assert not any(name.endswith(".tmp") for name in files)
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Images("val/rollouts")] == [6, 12, 18]  # nav's media hook, at each validation

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 3 and status["pid"] == os.getpid()
    history = json.loads((run_dir / "history.json").read_text())
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "val_exact_acc", "val_rollout_success", "lr"):
        assert len(history[column]) == 3
    assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,train_acc,val_loss,val_acc")
    epoch_lines = [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("Epoch ")]
    assert [EPOCH_LINE.match(line).group(1) for line in epoch_lines] == ["1", "2", "3"]
    assert json.loads((run_dir / "test_results.json").read_text()) == pytest.approx(results)
    for key in ("optimal_action_accuracy", "exact_accuracy", "rollout_success", "rollout_optimality", "loss"):
        assert 0 <= results[key] <= (1 if key != "loss" else 10)


def test_best_model_is_weights_only_and_rebuilds_the_model(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    results = train(tiny_config, run_dir)
    weights = torch.load(run_dir / "best_model.pt", weights_only=True)
    recipe = get_recipe(weights["recipe"])
    cfg = recipe.config.model_validate(weights["config"])
    task = recipe.build_task(cfg, weights["data_info"])
    task.load_state_dict(weights["state_dict"])
    again = recipe.evaluate(task.eval(), recipe.load_data(cfg, print), cfg, {}).results
    assert again == pytest.approx(results)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert evaluate_run(run_dir, recipe, load_config(run_dir / "config.yaml")) == pytest.approx(results)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_mid_epoch_then_resumed_matches_an_uninterrupted_run(tiny_config, tmp_path, monkeypatch, signum):
    straight = tmp_path / "straight"
    train(tiny_config, straight)

    epoch_batches = TensorBatches.epoch

    def interrupting(self, epoch=0, start=0):  # a Ctrl-C (or kill) during the 3rd batch of epoch 2
        for i, batch in enumerate(epoch_batches(self, epoch, start), start=start):
            if self.shuffle and epoch == 1 and i == 2:
                os.kill(os.getpid(), signum)
            yield batch

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(TensorBatches, "epoch", interrupting)
    assert train(tiny_config, resumed) == {"state": "interrupted"}
    monkeypatch.setattr(TensorBatches, "epoch", epoch_batches)
    assert json.loads((resumed / "status.json").read_text())["state"] == "interrupted"
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["batch_in_epoch"] == 3
    assert "kiln train --resume" in (resumed / "train.log").read_text()

    resume(resumed)
    a = json.loads((straight / "history.json").read_text())
    b = json.loads((resumed / "history.json").read_text())
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert b[column] == pytest.approx(a[column], rel=1e-5)
    final_a = torch.load(straight / "final_model.pt", weights_only=True)["state_dict"]
    final_b = torch.load(resumed / "final_model.pt", weights_only=True)["state_dict"]
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key])


def test_sigint_to_a_running_process_saves_and_resumes(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "kiln", "train", str(tiny_config), "train.max_epochs=500",
                                "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
        if status.get("epoch", 0) >= 1:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    status = read_status(run_dir)
    assert status["state"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] >= 1
    resume(run_dir, [f"train.max_epochs={saved['epoch'] + 1}"])
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["epoch"] == saved["epoch"] + 1
    assert len(json.loads((run_dir / "history.json").read_text())["epoch"]) == saved["epoch"] + 1


@pytest.mark.parametrize("gap_s", [0.0, 0.5], ids=["at-once", "after-the-save"])
def test_a_double_ctrl_c_stops_without_a_traceback_and_leaves_an_interrupted_run(tiny_config, tmp_path, gap_s):
    """The second SIGINT lands during the stop (gap 0) or after the first one's save (gap 0.5 s): either way one
    line, no traceback (the issue saw an atexit KeyboardInterrupt), status interrupted and a checkpoint that resumes."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "kiln", "train", str(tiny_config), "train.max_epochs=500",
                                "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and json.loads((run_dir / "status.json").read_text() if (run_dir / "status.json").is_file()
                                                     else "{}").get("epoch", 0) < 1:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert process.returncode in (130, -signal.SIGINT), output  # -SIGINT: the second one came after kiln had exited its loop
    assert read_status(run_dir)["state"] == "interrupted"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resume(run_dir, [f"train.max_epochs={saved['epoch'] + 1}"])
    assert read_status(run_dir)["state"] == "finished"


def test_resume_of_a_finished_run_asks_for_more_epochs(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config, run_dir, ["train.max_epochs=1"])
    with pytest.raises(KilnError, match=r"already trained 1 of train.max_epochs=1 epochs .*; pass e.g. train.max_epochs=11"):
        resume(run_dir)


def test_early_stopping(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    # Training loss falls, so "max" never improves after epoch 1: patience 1 stops after epoch 2.
    train(tiny_config, run_dir, ["train.monitor=train_loss", "train.mode=max", "train.patience=1", "train.max_epochs=6"])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["epoch"] == 2 and status["stop_reason"] == "early_stopping" and status["best_epoch"] == 1
    assert "Early stopping: train_loss did not improve for 1 validations" in (run_dir / "train.log").read_text()


def test_init_from_starts_with_the_given_weights(tiny_config, tmp_path):
    first = tmp_path / "first"
    train(tiny_config, first)
    second = tmp_path / "second"
    # With a vanishing learning rate the second run's weights stay those it started from.
    train(tiny_config, second, ["train.max_epochs=1", "train.lr=1e-12", "model.dropout=0"], init_from=str(first / "best_model.pt"))
    source = torch.load(first / "best_model.pt", weights_only=True)["state_dict"]
    final = torch.load(second / "final_model.pt", weights_only=True)["state_dict"]
    for key in source:
        torch.testing.assert_close(final[key], source[key], atol=1e-6, rtol=0)
    with pytest.raises(KilnError, match="does not fit this model"):
        train(tiny_config, tmp_path / "third", ["model.dim=8"], init_from=str(first / "best_model.pt"))


def test_ema_weights_are_exported(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config, run_dir, ["train.ema_decay=0.9", "train.max_epochs=1"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    exported = torch.load(run_dir / "final_model.pt", weights_only=True)["state_dict"]
    assert state["ema"] is not None
    key = next(k for k in exported if k.endswith("head.weight"))
    torch.testing.assert_close(exported[key], state["ema"][f"module.{key}"])
    assert not torch.allclose(exported[key], state["model"][key])


def test_threads_are_set_to_the_cores(monkeypatch):
    devices.set_threads(None)
    assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    devices.set_threads(1)
    assert torch.get_num_threads() == 1
    devices.set_threads(None, processes_on_this_machine=len(os.sched_getaffinity(0)))  # DDP shares the cores
    assert torch.get_num_threads() == 1


def test_unavailable_logger_and_device_are_one_line_errors(tiny_config, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(KilnError, match="wandb is not installed; run: pip install wandb"):
            make_loggers(["wandb"], tmp_path, "x")
    if not torch.cuda.is_available():
        with pytest.raises(KilnError, match="train.device=cuda but no CUDA GPU is visible"):
            devices.accelerator_for("cuda")
