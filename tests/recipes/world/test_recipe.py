"""The world recipe through the engine and the CLI: collect -> train (curriculum phases) -> evaluate, the
DataLoader path, TensorBoard media, lr-find, and 2-process DDP with configs/world/distributed.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.cli import main
from kiln.engine.fit import fit
from kiln.recipes import load_recipe_config

REPO = Path(__file__).resolve().parents[3]


def test_tiny_collect_train_evaluate_with_a_horizon_curriculum(world_config, tmp_path):
    phases = "phases=[{name: one_step, data: {sequence_length: 3}}, {name: three_steps, data: {sequence_length: 5}, train: {lr: 1.0e-3}}]"
    recipe, cfg = load_recipe_config(world_config, [phases, "train.num_workers=1", "train.loggers=[tensorboard]",
                                                    "train.log_histograms=true", "train.param_groups.model.encoder.lr=1.0e-3"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = fit(cfg, recipe, run_dir)
    saved = json.loads((run_dir / "test_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for horizon in ("1", "5", "10"):
        for table in ("pred", "copy_last"):
            assert set(saved[table][horizon]) == {"psnr", "ssim"}
            assert 0 < saved[table][horizon]["ssim"] <= 1 and saved[table][horizon]["psnr"] > 5
    assert set(saved["recon"]) == {"psnr", "ssim"}
    headline = recipe.headline(saved)
    assert (headline["value"], headline["baseline_value"]) == (saved["pred"]["1"]["psnr"], saved["copy_last"]["1"]["psnr"])
    history = json.loads((run_dir / "history.json").read_text())
    assert history["phase"] == [1, 1, 2, 2] and history["step"] == [3, 6, 3, 6]
    assert "lr_model.encoder" in history and "val_copy_psnr_10" in history
    phase_cfg = (run_dir / "phase_2" / "config.yaml").read_text()
    assert "sequence_length: 5" in phase_cfg
    report = run_dir / "phase_2" / "report"
    for name in ("filmstrip.png", "imagined.png", "imagined.gif", "report.md"):
        assert (report / name).stat().st_size > 500, name
    assert "| 10 |" in (report / "report.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "phase_1" / "tb"), size_guidance={"images": 0, "histograms": 0}).Reload()
    assert "val/truth_recon_prediction" in events.Tags()["images"]
    assert any(tag.startswith("weights/model.encoder") for tag in events.Tags()["histograms"])
    assert "val_pred_psnr" in events.Tags()["scalars"]


def test_kiln_evaluate_rewrites_the_results_and_report(world_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(world_config), "--run-dir", str(run_dir), "train.max_steps=2", "train.val_every_n_steps=2"]) == 0
    before = json.loads((run_dir / "test_results.json").read_text())
    (run_dir / "report" / "filmstrip.png").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "copy_last" in printed and "pred" in printed
    assert json.loads((run_dir / "test_results.json").read_text()) == before
    assert (run_dir / "report" / "filmstrip.png").is_file()


def test_lr_find_runs_on_a_world_config(world_config, tmp_path, capsys):
    assert main(["lr-find", str(world_config), "--steps", "12", "--min-lr", "1e-5", "--max-lr", "1", "--out", str(tmp_path / "lr")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    curve = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert 1 <= result["steps"] <= 12 and len(curve["loss"]) == result["steps"]
    assert (tmp_path / "lr" / "lr_find.png").is_file()


def test_distributed_config_trains_with_two_cpu_processes(carracing_dir, tmp_path):
    from .conftest import TINY_MODEL

    model = [f"model.{key}={json.dumps(value)}" for key, value in TINY_MODEL.items()]
    overrides = [f"data.dir={carracing_dir}", "data.generate=null", "data.sequence_length=4", "data.eval_stride=4", *model,
                 "train.max_steps=4", "train.val_every_n_steps=2", "train.batch_size=4", "train.num_workers=0", "train.loggers=[]",
                 "train.precision=32", "train.scheduler.warmup=1", "train.accumulate_grad_batches=1"]
    done = subprocess.run([sys.executable, "-m", "kiln", "train", str(REPO / "configs" / "world" / "distributed.yaml"),
                           "--run-dir", str(tmp_path / "ddp"), *overrides], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "device cpu x 2 processes" in done.stdout
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert history["step"] == [2, 4]
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["invocations"][0]["processes"] == 2
    assert set(json.loads((tmp_path / "ddp" / "test_results.json").read_text())["pred"]) == {"1", "5", "10"}


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs" / "world").glob("*.yaml")))
def test_shipped_configs_validate_and_build(config):
    recipe, cfg = load_recipe_config(REPO / "configs" / "world" / config)
    for _, _, phase in cfg.phase_configs() or [(None, None, cfg)]:
        task = recipe.build_task(phase, {"action_dim": 3})
        assert sum(p.numel() for p in task.parameters()) > 0
    side = cfg.model.decoder.init_size * 2 ** len(cfg.model.decoder.stages)
    assert cfg.data.generate is None or cfg.data.generate.size == side
    assert torch.is_tensor(next(task.parameters()))
