"""The printer recipe end to end: train, evaluate (with the ridge FIR on the same windows), export, stream,
compensate; the original guide's losses and the ridge fit against independent references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pyGCodeDecode
import pytest
import torch
import yaml
from torch import nn

from kiln.cli import main
from kiln.engine.export import PARITY, export_run
from kiln.errors import KilnError
from kiln.recipes import get_recipe, load_recipe_config
from kiln.recipes.printer.model import RidgeFIR, WindowPredictor
from kiln.recipes.printer.task import hybrid_loss

TRIANGLE = Path(pyGCodeDecode.__file__).parent / "examples" / "data" / "triangle.gcode"


class GuideHybridLoss(nn.Module):
    """The original guide's HybridLoss, verbatim."""

    def __init__(self, mae_ratio=0.7):
        super().__init__()
        self.mae_ratio = mae_ratio
        self.mse_ratio = 1.0 - mae_ratio
        self.mae = nn.L1Loss()
        self.mse = nn.MSELoss()

    def forward(self, preds, targets):
        return self.mae_ratio * self.mae(preds, targets) + self.mse_ratio * self.mse(preds, targets)


def test_losses_are_the_guides():
    pred, target = torch.randn(16, 5, 2), torch.randn(16, 5, 2)
    torch.testing.assert_close(hybrid_loss(pred, target, "hybrid", 0.7), GuideHybridLoss(0.7)(pred, target))
    torch.testing.assert_close(hybrid_loss(pred, target, "mae", 0.7), nn.L1Loss()(pred, target))
    torch.testing.assert_close(hybrid_loss(pred, target, "mse", 0.7), nn.MSELoss()(pred, target))


def test_ridge_fir_equals_sklearn_ridge_on_standardised_windows():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6, 3)) * np.array([1.0, 10.0, 0.1])
    y = x[:, -1, :2] @ np.array([[1.0, 0.5], [0.2, -1.0]]) + 0.3 + 0.01 * rng.normal(size=(300, 2))
    fir = RidgeFIR(6, 3)
    fir.fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), alpha=0.01)
    flat = x.reshape(300, -1)
    flat32 = torch.tensor(x, dtype=torch.float32).flatten(1).double().numpy()  # the float32 windows the fit saw
    mean, std = flat32.mean(0), flat32.std(0, ddof=1)
    reference = Ridge(alpha=0.01 * 300).fit((flat32 - mean) / std, y)
    got = fir(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, reference.predict((flat - mean) / std), atol=1e-4)


def test_train_evaluate_report_export_stream_and_compensate(printer_config, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(printer_config), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Real-Time Trajectory Error Model Evaluation" in out and "Ridge FIR baseline" in out
    results = json.loads((run / "test_results.json").read_text())
    for key in ("r2", "mae", "rmse", "ridge_r2", "stream_r2"):
        assert np.isfinite(results[key])
    assert results["test_models"] == ["bearing5"] and set(results["per_axis"]) == {"x", "y"}
    for name in ("metrics.json", "trajectory_comparison.png", "error_distribution.png", "error_correlation.png", "per_axis_error.png"):
        assert (run / "report" / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert "val_r2" in history and "val_inference_us" in history
    assert get_recipe("printer").headline(results) == {"metric": "test R2", "value": results["r2"], "baseline": "ridge FIR",
                                                       "baseline_value": results["ridge_r2"], "higher_is_better": True}

    # kiln export: the guide's input_features -> error_predictions, a dynamic batch, parity with PyTorch
    recipe, cfg = load_recipe_config(run / "config.yaml")
    for fmt in ("onnx", "torchscript"):
        result = export_run(run, recipe, cfg, fmt)
        assert result["max_abs_diff"] <= PARITY and result["batch_sizes_checked"] == [1, 3, 16]
    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_features"]
    assert [o.name for o in session.get_outputs()] == ["error_predictions"]
    assert session.run(None, {"input_features": np.zeros((5, 32, 4), np.float32)})[0].shape == (5, 2)

    # streaming keeps the state: each streamed error equals the whole model on the sequence up to that sample
    from kiln.engine.evaluate import load_run_task
    from kiln.recipes.printer.data import read_split
    from kiln.recipes.printer.stream import StreamingPredictor

    task = load_run_task(run, recipe, {})
    stream = StreamingPredictor.from_run(run)
    test = read_split(Path(cfg.data.dir) / "processed" / "test")
    positions, features = test["positions"][:120].double().numpy(), test["features"][:120]
    streamed = np.array([stream.predict(positions[i, 0], positions[i, 1], float(features[i, 0]), float(features[i, 1]))[:2]
                         for i in range(120)])
    window = WindowPredictor(task.model, task.stats).eval()
    with torch.no_grad():
        batch = np.array([window(features[None, :t + 1]).numpy()[0] for t in range(0, 120, 7)])
    np.testing.assert_allclose(streamed[::7], batch, atol=1e-5)

    # compensation on a user's G-code file: the last line is JSON, and the error is smaller after
    assert main(["printer", "compensate", str(run), str(TRIANGLE), "--out", str(tmp_path / "comp")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line) >= {"rms_before_mm", "rms_after_mm", "max_before_mm", "max_after_mm"}
    assert line["rms_after_mm"] < line["rms_before_mm"] and (tmp_path / "comp" / "compensation.png").is_file()
    assert json.loads((tmp_path / "comp" / "compensation.json").read_text()) == line


def test_ridge_alone_takes_the_closed_form_path(printer_config, tmp_path, capsys):
    run = tmp_path / "ridge"
    ridge_config = tmp_path / "ridge.yaml"
    ridge_config.write_text(yaml.safe_dump({**yaml.safe_load(printer_config.read_text()), "model": {"arch": "ridge"}}))
    assert main(["train", str(ridge_config), "--run-dir", str(run)]) == 0
    assert "no trainable parameters; fitted in closed form" in (run / "train.log").read_text()
    results = json.loads((run / "test_results.json").read_text())
    assert results["model"] == "ridge" and np.isclose(results["r2"], results["ridge_r2"])
    with pytest.raises(KilnError, match="streaming needs the LSTM"):
        from kiln.recipes.printer.stream import StreamingPredictor

        StreamingPredictor.from_run(run)


def test_bad_input_is_one_clear_line(printer_config, tmp_path, capsys):
    recipe = get_recipe("printer")
    _, cfg = load_recipe_config(printer_config)
    (tmp_path / "untrained").mkdir()
    with pytest.raises(KilnError, match="has no best_model.pt to export"):
        export_run(tmp_path / "untrained", recipe, cfg, "onnx")
    (tmp_path / "empty.gcode").write_text("M104 S200\n")
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", str(tmp_path / "empty.gcode")]) == 2
    assert "has no moves" in capsys.readouterr().err
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", "teapot"]) == 2
    assert "neither a procedural model" in capsys.readouterr().err
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--resonance-x-hz", "5"]) == 2
    assert "--resonance-x-hz" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_kiln_data_printer_reads_a_users_file_and_reports_malformed_lines(tmp_path, capsys):
    bad = tmp_path / "part.gcode"
    bad.write_text(TRIANGLE.read_text().replace("G1 X128.825 Y121.049 E18.16838", "G1 X128.825 Y E18.16838", 1))
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", str(bad), "--layers", "all"]) == 0
    out = capsys.readouterr().out
    assert "part line 7: cannot read 'Y'" in out and "Wrote" in out
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info["models_simulated"]["part"]["malformed_lines"] == [[7, "cannot read 'Y' as a letter followed by a number"]]


def test_a_folder_of_gcode_files_is_one_model_per_file(tmp_path, capsys):
    folder = tmp_path / "prints"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.gcode").write_text(TRIANGLE.read_text())
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", str(folder), "--layers", "all"]) == 0
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert sorted(info["models_simulated"]) == ["a", "b"] and info["num_trajectories"] == 2
