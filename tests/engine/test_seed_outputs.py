"""Engine features some seeds need, on the toy task: a per-epoch test metric, seed-named history columns, and
extra names for the weight files."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from kiln.recipes import Recipe

SEED_HEADERS = {"Epoch": "epoch", "Train Loss": "train_loss", "Validation Loss": "val_loss", "Test Loss": "test_loss",
                "Learning Rate": "lr"}
SEED_FILES = {"best_model.pt": ("best_model.pth", "best_model_combined.pth"), "final_model.pt": ("final_model.pth",),
              "checkpoints/epoch_{epoch:03d}.ckpt": ("checkpoint_epoch_{epoch}.pth",)}


def seed_named(toy, freeze: bool = False) -> Recipe:
    """The toy recipe with a task that asks for the seed's history headers and file names."""
    base = type(toy.build_task(toy.config.model_validate({"train": {}}), {}))

    class SeedNamedToy(base):
        history_file = ("training_metrics.csv", SEED_HEADERS)
        file_aliases = SEED_FILES

        def __init__(self, cfg):
            super().__init__(cfg)
            self.head.requires_grad_(not freeze)  # frozen: no trainable parameters, the closed-form path

    return Recipe(**{**toy.__dict__, "build_task": lambda cfg, info: SeedNamedToy(cfg)})


def test_test_metrics_are_the_validation_step_on_the_test_split(toy, toy_cfg, run_toy):
    cfg = toy_cfg(log_test_metrics=True, max_epochs=2)
    _, run_dir = run_toy("test_metrics", cfg)
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["test_loss"]) == 2 and len(history["test_mae"]) == 2
    weights = torch.load(run_dir / "final_model.pt", weights_only=True)["state_dict"]
    test = toy.load_data(cfg, None).test
    prediction = test["x"] @ weights["head.weight"][0] + weights["head.bias"]
    assert history["test_loss"][-1] == pytest.approx(((prediction - test["y"]) ** 2).mean().item(), rel=1e-5)
    assert history["test_loss"][-1] != pytest.approx(history["val_loss"][-1])
    _, plain = run_toy("plain", toy_cfg(max_epochs=2))
    assert "test_loss" not in json.loads((plain / "history.json").read_text())


def test_history_file_maps_history_columns_to_seed_headers(toy, toy_cfg, run_toy):
    _, run_dir = run_toy("seed_csv", toy_cfg(log_test_metrics=True, max_epochs=3), seed_named(toy))
    history = json.loads((run_dir / "history.json").read_text())
    with open(run_dir / "training_metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(SEED_HEADERS)
    assert len(rows) == 4
    for header, key in SEED_HEADERS.items():
        column = [float(row[rows[0].index(header)]) for row in rows[1:]]
        assert column == pytest.approx(history[key]), header


def test_weight_files_get_the_seed_names_as_links_to_the_same_bytes(toy, toy_cfg, run_toy):
    _, run_dir = run_toy("aliases", toy_cfg(max_epochs=4, checkpoint_every_n_epochs=2), seed_named(toy))
    for source, names in (("best_model.pt", ("best_model.pth", "best_model_combined.pth")), ("final_model.pt", ("final_model.pth",)),
                          ("checkpoints/epoch_002.ckpt", ("checkpoint_epoch_2.pth",)), ("checkpoints/epoch_004.ckpt", ("checkpoint_epoch_4.pth",))):
        for name in names:
            assert os.path.samefile(run_dir / source, run_dir / name), name  # current, not a stale earlier best
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / "checkpoint_epoch_1.pth").exists()
    loaded = torch.load(run_dir / "best_model.pth", weights_only=True)
    assert loaded["recipe"] == "toy" and "state_dict" in loaded


def test_a_closed_form_task_gets_its_seed_names_too(toy, toy_cfg, run_toy):
    _, run_dir = run_toy("closed", toy_cfg(), seed_named(toy, freeze=True))
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [0]
    assert os.path.samefile(run_dir / "best_model.pt", run_dir / "best_model_combined.pth")
    assert os.path.samefile(run_dir / "final_model.pt", run_dir / "final_model.pth")
