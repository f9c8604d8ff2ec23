"""`kiln compare`: one metric of several runs (a multi-phase one among them) against epoch."""

from __future__ import annotations

import json

import pytest

from kiln.cli import main

from .test_seed_outputs import seed_named

PHASES = [{"name": "a", "train": {"max_epochs": 2}}, {"name": "b", "train": {"max_epochs": 1, "lr": 0.01}}]


def test_compare_plots_history_and_seed_columns_of_several_runs(toy, toy_cfg, run_toy, tmp_path, capsys):
    _, fast = run_toy("fast", toy_cfg(max_epochs=3, lr=0.05), seed_named(toy))
    _, slow = run_toy("slow", toy_cfg(max_epochs=2, lr=0.001), seed_named(toy))
    _, phased = run_toy("phased", toy_cfg(phases=PHASES), seed_named(toy))
    out = tmp_path / "cmp" / "val.png"
    capsys.readouterr()
    assert main(["compare", str(fast), str(slow), str(phased), "--metric", "Validation Loss", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and out.stat().st_size > 1000
    histories = {d: json.loads((d / "history.json").read_text()) for d in (fast, slow, phased)}
    for d, history in histories.items():
        row = result["runs"][str(d)]
        assert row["epochs"] == len(history["val_loss"]) and row["last"] == pytest.approx(history["val_loss"][-1])
        assert row["min"] == pytest.approx(min(history["val_loss"]))
        assert history["epoch"][history["val_loss"].index(min(history["val_loss"]))] == row["min_epoch"]
    assert result["runs"][str(phased)]["epochs"] == 3  # both phases, epochs counted across them
    # a history column works for any run, with or without seed-named files
    assert main(["compare", str(fast), str(phased), "--metric", "train_mae", "--out", str(out)]) == 0


def test_compare_names_the_metrics_a_run_has(toy_cfg, run_toy, tmp_path, capsys):
    _, run_dir = run_toy("one", toy_cfg(max_epochs=1))
    assert main(["compare", str(run_dir), "--metric", "Validation Los", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kiln: error: '{run_dir}' has no metric 'Validation Los'; it has: train_loss, train_mae, val_loss")
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no history.json" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
