"""The LR range test against a known answer: SGD on a quadratic diverges above 2 / (largest Hessian eigenvalue)."""

from __future__ import annotations

import json

import pytest

from kiln.cli import main
from kiln.engine.lr_find import lr_range_test, suggest
from kiln.errors import KilnError


def test_range_test_stops_past_the_divergence_lr_and_suggests_below_it(toy_cfg, toy, tmp_path):
    # loss = mean (w.x - y)^2 with x ~ N(0, diag(2, 1, 1, 1)^2): Hessian 2 diag(4, 1, 1, 1), so plain gradient
    # descent diverges for lr > 2 / 8 = 0.25
    critical = 0.25
    cfg = toy_cfg(data={"scales": [2.0, 1.0, 1.0, 1.0], "noise": 0.0, "size": 256}, batch_size=64)
    result = lr_range_test(cfg, toy, tmp_path / "lr", min_lr=1e-4, max_lr=10.0, steps=100)
    curve = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    stop_lr = curve["lr"][-1]
    assert critical < stop_lr < 10 * critical, result["stopped"]
    assert "4x its minimum" in result["stopped"] or "non-finite" in result["stopped"]
    assert 1e-3 < result["suggested_lr"] < critical
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
    assert curve["lr"][0] == pytest.approx(1e-4) and len(curve["lr"]) == len(curve["loss"]) == result["steps"]


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (-4 + 0.1 * i) for i in range(40)]
    # a loss that is flat, falls fastest around lr = 1e-2, bottoms out, then rises
    losses = [2.0 - 1.5 / (1 + (1e-2 / lr) ** 2) + (lr > 0.5) * 10 * lr for lr in lrs]
    assert suggest(lrs, losses) == pytest.approx(1e-2, rel=0.6)


def test_bad_ranges_are_one_line_errors(toy_cfg, toy, tmp_path):
    with pytest.raises(KilnError, match="--min-lr .* must be positive and below --max-lr"):
        lr_range_test(toy_cfg(), toy, tmp_path, min_lr=1.0, max_lr=0.1)


def test_kiln_lr_find_on_a_recipe_config(tiny_config, tmp_path, capsys):
    assert main(["lr-find", str(tiny_config), "--steps", "30", "--out", str(tmp_path / "lr"), "train.max_epochs=1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"suggested_lr", "min_loss_lr", "steps", "path"}
    assert (tmp_path / "lr" / "lr_find.png").is_file() and (tmp_path / "lr" / "lr_find.json").is_file()
