"""The seqgen recipe through the engine: phases, schedules, the original guide's files, the generator's sampling."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from kiln.engine.fit import fit
from kiln.recipes import get_recipe, load_recipe_config
from kiln.recipes.seqgen.task import COMBINED_COLUMNS, PURE_COLUMNS, teacher_forcing_ratio

TWO_PHASES = [
    {"name": "p1", "train": {"max_epochs": 2, "lr": 1e-3, "scheduler": {"name": "warmup_cosine", "warmup": 0.3, "min_lr": 5e-4}}},
    {"name": "p2", "model": {"teacher_forcing_start": 0.6, "teacher_forcing_end": 0.5, "max_lag": 6},
     "train": {"max_epochs": 2, "lr": 5e-4, "scheduler": {"name": "linear_decay", "min_lr": 1e-4}}},
]


def train(config: Path, run_dir: Path, overrides=(), phases=None):
    if phases is not None:
        raw = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**raw, "phases": phases}))
    recipe, cfg = load_recipe_config(config, list(overrides))
    run_dir.mkdir()
    return fit(cfg, recipe, run_dir), cfg


@pytest.fixture
def quick_discriminator(monkeypatch):
    """Runs here test the plumbing; the discriminator itself is tested at its real size below."""
    from kiln.recipes.seqgen import evaluation

    monkeypatch.setattr(evaluation, "DISCRIMINATOR_STEPS", 5)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_teacher_forcing_schedule_is_the_guide_s_and_restarts_at_each_phase():
    assert teacher_forcing_ratio(0, 100, 0.7, 0.6) == 0.7
    assert teacher_forcing_ratio(50, 100, 0.7, 0.6) == pytest.approx(0.65)
    assert teacher_forcing_ratio(99, 100, 0.7, 0.6) == pytest.approx(0.601)   # the last epoch of phase 1
    assert teacher_forcing_ratio(0, 100, 0.6, 0.5) == 0.6                       # the first of phase 2
    assert teacher_forcing_ratio(120, 100, 0.7, 0.6) == 0.6                     # never below the end value


def test_two_phase_run_writes_the_guide_s_files_and_schedules(seqgen_config, tmp_path, quick_discriminator):
    results, _ = train(seqgen_config, tmp_path / "run", phases=TWO_PHASES)
    run_dir = tmp_path / "run"
    for k in (1, 2):
        phase = run_dir / f"phase_{k}"
        with open(phase / "training_metrics.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == list(COMBINED_COLUMNS) and [r[0] for r in rows[1:]] == ["1", "2"]
        for source, alias in (("best_model.pt", "best_model.pth"), ("best_model.pt", "best_model_combined.pth"),
                              ("final_model.pt", "final_model.pth"), ("checkpoints/epoch_002.ckpt", "checkpoint_epoch_2.pth")):
            assert os.path.samefile(phase / source, phase / alias)
        args = json.loads((phase / "args.json").read_text())
        assert args["epochs"] == 2 and args["loss"] == "combined" and args["max_lag"] == (5 if k == 1 else 6)
        assert (phase / "report" / "sequences.png").is_file()
    history = json.loads((run_dir / "history.json").read_text())
    lr = history["lr"]
    assert lr[1] == pytest.approx(5e-4, rel=1e-6)       # phase 1 ends its cosine at min_lr
    assert lr[3] == pytest.approx(1e-4, rel=1e-6)       # phase 2 ends its linear decay at its min_lr
    assert 1e-4 < lr[2] < 5e-4                          # and starts from its own lr, 5e-4, decaying linearly
    assert lr[2] == pytest.approx(5e-4 + (1e-4 - 5e-4) * 0.5, rel=0.05)  # halfway (4 steps per epoch, 8 in the phase)
    assert "test_loss" in history and "test_autocorr" in history
    for who in ("free_running", "knn", "mean_sequence"):
        assert set(results[who]) == {"mae", "acf_error", "spectral_distance", "discriminative_score"}
    assert results["max_lag"] == 6 and results["samples"] == 8
    assert json.loads((run_dir / "test_results.json").read_text()) == results


def test_phase_2_continues_from_phase_1_s_best_weights(seqgen_config, tmp_path, quick_discriminator):
    still = [TWO_PHASES[0], {"name": "still", "train": {"max_epochs": 1, "lr": 1e-12, "scheduler": "none", "weight_decay": 0.0}}]
    train(seqgen_config, tmp_path / "run", ["train.checkpoint_every_n_epochs=0", "train.log_test_metrics=false"], phases=still)
    best = weights(tmp_path / "run" / "phase_1" / "best_model.pt")
    for key, value in weights(tmp_path / "run" / "phase_2" / "final_model.pt").items():
        torch.testing.assert_close(value, best[key], atol=1e-7, rtol=0)


def test_pure_strategies_log_the_guide_s_five_columns_and_their_own_loss(seqgen_config):
    recipe = get_recipe("seqgen")
    for loss, part in (("mae", "mae"), ("autocorr", "autocorr")):
        cfg = load_recipe_config(seqgen_config, [f"model.loss={loss}"])[1]
        splits = recipe.load_data(cfg, lambda m: None)
        task = recipe.build_task(cfg, splits.info).eval()
        assert task.history_file == ("training_metrics.csv", PURE_COLUMNS)
        with torch.no_grad():
            out = task.validation_step(splits.val)
        assert out["loss"].item() == pytest.approx(out[part].item())


def test_free_running_generation_is_the_step_by_step_recurrence(seqgen_config):
    """Fed its own free-running output as the truth, the sequence-at-once training pass reproduces it."""
    cfg = load_recipe_config(seqgen_config, ["model.hidden_size=16"])[1]
    task = get_recipe("seqgen").build_task(cfg, {}).eval()
    params = torch.randn(4, 2)
    with torch.no_grad():
        free = task.model(params)
        again = task.model.teacher_forced(params, free, teacher_forcing=1.0)
    assert free.shape == (4, 151, 5)
    torch.testing.assert_close(again, free, atol=1e-5, rtol=1e-4)


def listen_to_fed_steps(model) -> None:
    """An untrained generator's output barely depends on the previous step it is fed; scale those input weights up
    so that what it is fed (truth, own rollout or one-step predictions) shows in its output."""
    with torch.no_grad():
        model.lstm.weight_ih_l0[:, :5].mul_(10)


def test_the_first_step_starts_from_a_state_made_from_the_parameters(seqgen_config):
    """With the LSTM's input weights zeroed, its inputs (parameters included) cannot reach step 0: step 0 still
    depends on the parameters through the initial state, and only through it."""
    cfg = load_recipe_config(seqgen_config, ["model.hidden_size=16"])[1]
    model = get_recipe("seqgen").build_task(cfg, {}).eval().model
    with torch.no_grad():
        model.lstm.weight_ih_l0.zero_()
        params = torch.tensor([[-1.0, 0.5], [1.0, -0.5]])
        first = model(params)[:, 0]
        assert (first[0] - first[1]).abs().max() > 1e-3
        model.initial.weight.zero_()
        first = model(params)[:, 0]
        torch.testing.assert_close(first[0], first[1])


def test_sequential_sampling_compounds_the_model_s_own_errors_and_parallel_does_not(seqgen_config):
    """At teacher forcing 0, the guide's sequential scheduled sampling is free-running generation itself (what the
    model is evaluated on), while the parallel pass feeds one-step predictions made from the true history. At teacher
    forcing 1 both are the teacher-forced recurrence. Own outputs stay in the graph: step 1 back-propagates into step 0."""
    cfg = load_recipe_config(seqgen_config, ["model.hidden_size=16"])[1]
    model = get_recipe("seqgen").build_task(cfg, {}).eval().model
    listen_to_fed_steps(model)
    torch.manual_seed(0)
    params, target = torch.randn(4, 2), torch.randn(4, 151, 5)
    with torch.no_grad():
        free = model(params)
        torch.testing.assert_close(model.rollout(params, target, teacher_forcing=0.0), free)
        assert not torch.allclose(model.teacher_forced(params, target, teacher_forcing=0.0), free, atol=1e-3)
        torch.testing.assert_close(model.rollout(params, target, teacher_forcing=1.0),
                                   model.teacher_forced(params, target, teacher_forcing=1.0), atol=1e-5, rtol=1e-4)
    # d(step 1's outputs)/d(head bias): 1 per sequence directly, plus the path through step 0's output when fed back
    bias = model.head.bias
    fed_truth = torch.autograd.grad(model.rollout(params, target, teacher_forcing=1.0)[:, 1].sum(), bias)[0]
    fed_own = torch.autograd.grad(model.rollout(params, target, teacher_forcing=0.0)[:, 1].sum(), bias)[0]
    torch.testing.assert_close(fed_truth, torch.full((5,), 4.0))
    assert (fed_own - fed_truth).abs().max() > 1e-3


def test_training_step_samples_as_model_sampling_says(seqgen_config):
    """With no teacher forcing and no noise, the sequential training step is the free-running validation step;
    the parallel one is not."""
    recipe = get_recipe("seqgen")
    losses = {}
    for sampling in ("sequential", "parallel"):
        cfg = load_recipe_config(seqgen_config, [f"model.sampling={sampling}", "model.teacher_forcing_start=0",
                                                 "model.teacher_forcing_end=0", "model.noise_level=0"])[1]
        splits = recipe.load_data(cfg, lambda m: None)
        torch.manual_seed(0)
        task = recipe.build_task(cfg, splits.info).eval()
        listen_to_fed_steps(task.model)
        with torch.no_grad():
            losses[sampling] = (task.training_step(splits.val)["loss"].item(), task.validation_step(splits.val)["loss"].item())
    assert losses["sequential"][0] == pytest.approx(losses["sequential"][1], rel=1e-5)
    assert losses["parallel"][0] != pytest.approx(losses["parallel"][1], rel=1e-3)
