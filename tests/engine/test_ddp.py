"""DDP through the engine: 2 CPU processes (gloo) started by `kiln train ... train.devices=2`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch

from pathlib import Path

import pytest

# fp32, no dropout and SGD (AdamW divides by sqrt(v), which turns a tiny difference in a near-zero gradient into a
# full lr-sized step). What remains for nav: its loss is a mean over the reachable cells of a batch, and DDP averages
# the two ranks' means, which weighs cells slightly differently than one mean over the whole batch (measured: up to
# 4e-4 after 12 steps, where the weights moved by ~1e-2). The toy task's loss is a per-sample mean: there the two
# runs agree to float rounding.
COMMON = ["train.precision=32", "model.dropout=0", "train.optimizer=sgd", "train.lr=0.05", "train.max_epochs=2", "train.loggers=[]"]
NAV_TOLERANCE = 1e-3
TOY_TOLERANCE = 1e-6


def kiln(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_config, tmp_path):
    one = kiln("train", str(tiny_config), "--run-dir", str(tmp_path / "one"), *COMMON, "train.batch_size=32")
    assert one.returncode == 0, one.stderr
    two = kiln("train", str(tiny_config), "--run-dir", str(tmp_path / "two"), *COMMON, "train.batch_size=16",
               "train.devices=2", "train.strategy=ddp")
    assert two.returncode == 0, two.stdout + two.stderr
    assert "device cpu x 2 processes" in two.stdout
    a = torch.load(tmp_path / "one" / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "final_model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=NAV_TOLERANCE, rtol=0)
    history_a = json.loads((tmp_path / "one" / "history.json").read_text())
    history_b = json.loads((tmp_path / "two" / "history.json").read_text())
    assert history_b["step"] == history_a["step"] == [6, 12]  # 192 samples: 6 global batches of 32 per epoch
    for column in ("train_loss", "val_loss", "val_acc"):  # epoch metrics reduced over both ranks
        assert history_b[column] == pytest.approx(history_a[column], abs=1e-3)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["invocations"][0]["processes"] == 2


def test_a_stop_request_reaches_every_rank_and_the_run_resumes(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "kiln", "train", str(tiny_config), "--run-dir", str(run_dir),
                                *COMMON[:-2], "train.max_epochs=500", "train.batch_size=16", "train.devices=2",
                                "train.strategy=ddp"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
        if status.get("epoch", 0) >= 1:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # to rank 0 only: rank 1 learns of it at the next update
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    resumed = kiln("train", "--resume", str(run_dir), f"train.max_epochs={saved['epoch'] + 1}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "device cpu x 2 processes" not in resumed.stdout  # a resume logs "Resuming", not the start line
    assert f"Resuming {run_dir}" in resumed.stdout
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == saved["epoch"] + 1
    assert len(json.loads((run_dir / "history.json").read_text())["epoch"]) == saved["epoch"] + 1


def test_ddp_gradients_are_the_mean_over_ranks_to_float_rounding(tmp_path):
    script = Path(__file__).with_name("ddp_toy.py")
    common = ["max_epochs=3", "data={size: 96, noise: 0.5}"]  # 96 = 3 global batches of 32: no padding
    for name, extra in (("one", ["batch_size=32"]), ("two", ["batch_size=16", "devices=2", "strategy=ddp"])):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / name), *common, *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    a = torch.load(tmp_path / "one" / "final_model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "final_model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=TOY_TOLERANCE, rtol=0)
    assert not torch.allclose(a["head.weight"], torch.zeros(1, 4))
