"""A toy recipe of the engine's own: linear regression on synthetic data, so the loop is tested without any
real recipe. Everything about it is known in closed form (gradients, the optimum, the divergence lr)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import nn

from kiln.config import RunConfig, Section
from kiln.engine.task import Evaluation, Splits, Task
from kiln.recipes import Recipe


class ToyData(Section):
    size: int = 64
    dim: int = 4
    scales: list[float] = [1.0, 1.0, 1.0, 1.0]  # std of each input feature (the Hessian's eigenvalues are 2 * scale^2)
    noise: float = 0.1
    seed: int = 0


class ToyModel(Section):
    hidden: int = 0                  # 0: a linear model; > 0: a two-layer net (module names "encoder", "head")
    poison_call: int | None = Field(None, description="the loss of this training_step call (1-based) becomes NaN")
    spike_call: int | None = Field(None, description="the loss of this call is multiplied by 50")


class ToyConfig(RunConfig):
    recipe: Literal["toy"] = "toy"
    data: ToyData = ToyData()
    model: ToyModel = ToyModel()


def true_weights(dim: int) -> torch.Tensor:
    return torch.linspace(-1, 1, dim)


def make_split(data: ToyData, offset: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(data.seed + offset)
    x = torch.randn(data.size, data.dim, generator=g) * torch.tensor(data.scales)
    y = x @ true_weights(data.dim) + data.noise * torch.randn(data.size, generator=g)
    return {"x": x, "y": y}


class ToyTask(Task):
    console_metrics = ("loss", "mae")

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        dim, hidden = cfg.data.dim, cfg.model.hidden
        if hidden:
            self.encoder = nn.Linear(dim, hidden)
            self.head = nn.Linear(hidden, 1)
        else:
            self.head = nn.Linear(dim, 1)
        self.settings, self.calls, self.epochs_started = cfg.model, 0, []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)) if hasattr(self, "encoder") else x).squeeze(-1)

    def on_epoch_start(self, epoch, max_epochs):
        self.epochs_started.append((epoch, max_epochs))

    def training_step(self, batch):
        self.calls += 1
        error = self.predict(batch["x"]) - batch["y"]
        loss = (error ** 2).mean()
        if self.calls == self.settings.poison_call:
            loss = loss * float("nan")
        if self.calls == self.settings.spike_call:
            loss = loss * 50
        return {"loss": loss, "mae": error.abs().mean()}

    def validation_step(self, batch):
        error = self.predict(batch["x"]) - batch["y"]
        return {"loss": (error ** 2).mean(), "mae": error.abs().mean()}

    def export_module(self, batch):
        return self.head, (batch["x"],)

    def log_media(self, media, batch, step):
        residual = self.predict(batch["x"]) - batch["y"]
        media.histogram("toy/residuals", residual, step)
        media.image("toy/residual_map", (residual.abs() / residual.abs().max()).view(8, -1), step)


def evaluate(task, splits, cfg, options):
    test = splits.test
    with torch.no_grad():
        error = task.predict(test["x"].to(task.device)).cpu() - test["y"]
    return Evaluation({"mse": (error ** 2).mean().item()})


TOY = Recipe(
    name="toy", config=ToyConfig, prepare_data=lambda cfg, log: None,
    load_data=lambda cfg, log: Splits(*(make_split(cfg.data, k) for k in range(3)), info={"dim": cfg.data.dim}),
    build_task=lambda cfg, info: ToyTask(cfg), evaluate=evaluate, report=lambda run_dir, task, splits, cfg, results, outputs: None,
    data_arguments=lambda parser: None, make_data=lambda args: None,
)


def toy_config(**train) -> ToyConfig:
    """A toy config; `train` keys override (data=..., model=... set those sections)."""
    data, model, phases = train.pop("data", {}), train.pop("model", {}), train.pop("phases", None)
    settings = {"batch_size": 16, "max_epochs": 3, "lr": 0.05, "optimizer": "sgd", "momentum": 0.0, "loggers": [],
                "threads": 1, "precision": "32", **train}
    return ToyConfig.model_validate({"name": "toy", "data": data, "model": model, "train": settings, "phases": phases})


@pytest.fixture
def toy():
    return TOY


@pytest.fixture
def run_toy(tmp_path):
    """run_toy(name, cfg, recipe=TOY, **fit kwargs) -> (results, run_dir): fits the toy recipe into tmp_path/name."""
    from kiln.engine.fit import fit

    def run(name: str, cfg: ToyConfig, recipe: Recipe = TOY, **kwargs):
        run_dir = Path(tmp_path) / name
        run_dir.mkdir(exist_ok=True)
        return fit(cfg, recipe, run_dir, **kwargs), run_dir

    return run


@pytest.fixture
def toy_cfg():
    return toy_config
