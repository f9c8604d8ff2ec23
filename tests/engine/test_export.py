"""kiln export: every format is written with a dynamic batch axis and checked against PyTorch on held-out samples."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from kiln.cli import main
from kiln.engine.export import PARITY, export_run
from kiln.errors import KilnError


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_formats_match_pytorch(toy_cfg, toy, run_toy, fmt):
    cfg = toy_cfg(max_epochs=1)
    _, run_dir = run_toy("run", cfg)
    result = export_run(run_dir, toy, cfg, fmt)
    assert result["format"] == fmt and result["max_abs_diff"] <= PARITY and result["batch_sizes_checked"] == [1, 3, 16]
    head = torch.load(run_dir / "best_model.pt", weights_only=True)["state_dict"]
    x = torch.randn(5, 4)
    expected = x @ head["head.weight"].T + head["head.bias"]
    if fmt == "onnx":  # an independent runtime, at a batch size the export never saw
        session = onnxruntime.InferenceSession(result["path"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    elif fmt == "torchscript":
        torch.testing.assert_close(torch.jit.load(result["path"])(x), expected)
    else:
        assert set(load_file(result["path"])) == {"weight", "bias"}


def test_a_run_without_weights_or_export_is_a_clear_error(toy_cfg, toy, run_toy, tmp_path):
    cfg = toy_cfg(max_epochs=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KilnError, match="has no best_model.pt to export; train it first"):
        export_run(tmp_path / "empty", toy, cfg, "onnx")
    _, run_dir = run_toy("run", cfg)

    class NoExport(type(toy.build_task(cfg, {}))):
        def export_module(self, batch):
            return None

    with pytest.raises(KilnError, match="has nothing to export"):
        export_run(run_dir, dataclasses.replace(toy, build_task=lambda cfg, info: NoExport(cfg)), cfg, "onnx")


def test_kiln_export_prints_json_last_and_keeps_no_failed_file(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "nav"
    assert main(["train", str(tiny_config), "--run-dir", str(run_dir), "train.max_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "policy.onnx")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(tmp_path / "policy.onnx") and result["max_abs_diff"] <= PARITY
    session = onnxruntime.InferenceSession(result["path"])
    cells = np.zeros((7, 6, 6), np.uint8)
    assert session.run(None, {session.get_inputs()[0].name: cells})[0].shape == (7, 36, 5)
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "is not a kiln run directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp"))


def test_a_module_may_name_its_onnx_inputs_and_outputs(toy_cfg, toy, run_toy):
    cfg = toy_cfg(max_epochs=1)
    _, run_dir = run_toy("run", cfg)

    class Named(torch.nn.Module):
        input_names, output_names = ("features",), ("prediction",)

        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head(x)

    class NamedExport(type(toy.build_task(cfg, {}))):
        def export_module(self, batch):
            return Named(self.head), (batch["x"],)

    result = export_run(run_dir, dataclasses.replace(toy, build_task=lambda cfg, info: NamedExport(cfg)), cfg, "onnx")
    session = onnxruntime.InferenceSession(result["path"])
    assert [i.name for i in session.get_inputs()] == ["features"] and [o.name for o in session.get_outputs()] == ["prediction"]
    assert session.run(["prediction"], {"features": np.zeros((3, 4), np.float32)})[0].shape == (3, 1)
