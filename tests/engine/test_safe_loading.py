"""A crafted pickle handed to any entry point runs nothing: kiln reads checkpoints with weights_only=True.

Every .pt/.ckpt of a trained run is replaced by a pickle whose unpickling would create a marker file; each
command that reads run files must refuse it in one line (exit 2) or not read it at all, and the marker must
never appear."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from kiln.cli import main


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data_dir):
    import yaml

    root = tmp_path_factory.mktemp("safe")
    config = {"recipe": "nav", "data": {"dir": str(tiny_data_dir), "generate": None},
              "model": {"dim": 16, "depth": 1, "token_hidden": 16, "channel_mult": 2},
              "train": {"batch_size": 64, "max_epochs": 1, "loggers": [], "threads": 1}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "tiny.yaml"), "--run-dir", str(root / "run")]) == 0
    return root


@pytest.fixture
def poisoned(trained, tmp_path):
    """A copy of the trained run with every weight and checkpoint file replaced by the crafted pickle."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    marker = tmp_path / "code-ran"
    for path in [*run.glob("*.pt"), *run.glob("checkpoints/*.ckpt")]:
        torch.save({"kiln_format": 1, "recipe": "nav", "state_dict": Payload(marker)}, path)
    return run, marker, trained / "tiny.yaml"


@pytest.mark.parametrize("command", [
    lambda run, cfg: ["train", "--resume", str(run)],
    lambda run, cfg: ["train", str(cfg), "--run-dir", str(run.parent / "new"), "--init-from", str(run / "best_model.pt")],
    lambda run, cfg: ["evaluate", str(run)],
    lambda run, cfg: ["export", str(run), "--format", "safetensors"],
    lambda run, cfg: ["export", str(run), "--format", "onnx", "--weights", "final"],
    lambda run, cfg: ["printer", "compensate", str(run), str(run.parent / "square.gcode")],
], ids=["resume", "init-from", "evaluate", "export", "export-final", "compensate"])
def test_a_crafted_pickle_is_refused_in_one_line_and_runs_nothing(poisoned, command, capsys):
    run, marker, cfg = poisoned
    (run.parent / "square.gcode").write_text("G21\nG90\nM83\nG1 Z0.2 F3000\nG1 X20 Y0 E1\nG1 X20 Y20 E1\nG1 X0 Y20 E1\nG1 X0 Y0 E1\n")
    assert main(command(run, cfg)) == 2
    err = capsys.readouterr().err.strip()
    assert "holds Python objects other than tensors" in err and "runs no code from them" in err
    assert "(Trying to load unsupported GLOBAL posix.system whose module posix is blocked)" in err  # the global, named whole
    assert len(err.splitlines()) == 1
    assert not marker.exists()


def test_commands_that_read_no_weights_never_unpickle_them(poisoned, capsys):
    """compare reads history.json, status reads status.json, lr-find the config and the data."""
    run, marker, cfg = poisoned
    assert main(["compare", str(run), "--metric", "val_loss", "--out", str(run.parent / "c.png")]) == 0
    assert main(["status", str(run)]) == 0
    assert main(["lr-find", str(cfg), "--steps", "10", "--out", str(run.parent / "lr")]) == 0
    assert not marker.exists()
