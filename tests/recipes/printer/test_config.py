"""The printer's config: every key acts in the setting chosen, or is a one-line error that says how to fix it."""

from __future__ import annotations

import pytest
import yaml

from kiln.cli import main
from kiln.config import validate
from kiln.errors import KilnError
from kiln.recipes import load_recipe_config
from kiln.recipes.printer.config import PrinterConfig


def test_the_ridge_arch_has_only_its_penalty(printer_config, capsys):
    _, cfg = load_recipe_config("configs/printer/ridge.yaml")
    assert cfg.model.model_dump() == {"arch": "ridge", "ridge_alpha": 1e-3}
    # the LSTM config's model keys (burn_in is its first, sorted) mean nothing to the ridge FIR alone
    with pytest.raises(KilnError, match=r"unknown config key 'model.burn_in' \(model.arch 'ridge' has no burn_in\); "
                                        r"valid keys here: arch, ridge_alpha$"):
        load_recipe_config(printer_config, ["model.arch=ridge"])
    assert main(["train", str(printer_config), "model.arch=ridge"]) == 2
    assert "model.arch 'ridge' has no burn_in" in capsys.readouterr().err
    assert validate({"model": {"arch": "lstm", "ridge_alpha": 0.5}}, PrinterConfig, "x").model.ridge_alpha == 0.5  # fitted beside


def test_loss_ratio_weighs_the_hybrid_loss_only():
    assert validate({}, PrinterConfig, "x").model.loss_ratio == 0.7  # the guide's HybridLoss(0.7)
    assert validate({"model": {"loss_type": "hybrid", "loss_ratio": 0.4}}, PrinterConfig, "x").model.loss_ratio == 0.4
    assert validate({"model": {"loss_type": "mae"}}, PrinterConfig, "x").model.loss_ratio is None
    with pytest.raises(KilnError, match=r"^x: model: .*model.loss_ratio weighs the hybrid loss and model.loss_type=mse "
                                        r"ignores it; drop model.loss_ratio \(null\) or set model.loss_type=hybrid$"):
        validate({"model": {"loss_type": "mse", "loss_ratio": 0.7}}, PrinterConfig, "x")


def test_dropout_needs_two_lstm_layers():
    with pytest.raises(KilnError, match=r"model.dropout acts between LSTM layers; with model.num_layers=1 set model.dropout=0"):
        validate({"model": {"num_layers": 1, "dropout": 0.1}}, PrinterConfig, "x")
    assert validate({"model": {"num_layers": 1, "dropout": 0.0}}, PrinterConfig, "x").model.num_layers == 1


def test_every_printer_run_streams_on_one_thread_unless_told(tmp_path):
    assert validate({}, PrinterConfig, "x").train.threads == 1
    assert validate({"train": {"threads": 2}}, PrinterConfig, "x").train.threads == 2
    for name in ("quick", "hybrid", "ridge"):
        assert "threads" not in (yaml.safe_load(open(f"configs/printer/{name}.yaml"))["train"])
        assert load_recipe_config(f"configs/printer/{name}.yaml")[1].train.threads == 1


@pytest.mark.parametrize("flag, value, reason", [
    ("--sample-rate", "1e9", "less than or equal to 100000"),      # 1e9 Hz: 130 GiB for one procedural layer
    ("--sample-rate", "1e-3", "greater than or equal to 200"),     # 3 samples a layer: no motion left to learn
    ("--acceleration", "inf", "finite number"),
    ("--max-velocity", "inf", "finite number"),
    ("--model-layers", "100000000", "less than or equal to 1000"),  # would write 40 billion lines of G-code first
    ("--shaper-x-hz", "1e-9", "greater than or equal to 5"),       # a shaper pulse every 30 years
    ("--friction", "1e308", "less than or equal to 100000"),
    ("--layers", "sampled:0", "'sampled:0' is not one of all, sampled:N (N >= 1), first:N or A-B"),
])
def test_generator_flags_no_printer_has_are_one_line_and_nothing_is_written(tmp_path, capsys, flag, value, reason):
    assert main(["data", "printer", "--out", str(tmp_path / "d"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: {flag}: ") and reason in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_every_shipped_printer_config_is_inside_the_generator_bounds():
    for name in ("quick", "hybrid", "ridge"):
        assert load_recipe_config(f"configs/printer/{name}.yaml")[1].data.generate.model_layers <= 1000
