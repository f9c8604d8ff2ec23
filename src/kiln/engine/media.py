"""Loggers (TensorBoard, CSV, W&B) and what goes to them besides scalars: images, figures, histograms.

Only rank 0 has loggers. A recipe's `Task.log_media` receives a `MediaLog` and never needs to know
which loggers are on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from kiln.errors import KilnError


def make_loggers(names: list[str], run_dir: Path, run_name: str | None) -> list:
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    loggers = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(root_dir=str(run_dir), name="tb", version=""))
        elif name == "csv":
            loggers.append(CSVLogger(root_dir=str(run_dir), name="csv", version=""))
        else:
            try:
                import wandb  # noqa: F401
                from lightning.pytorch.loggers import WandbLogger
            except ImportError:
                raise KilnError("train.loggers includes wandb but wandb is not installed; run: pip install wandb") from None
            loggers.append(WandbLogger(save_dir=str(run_dir), name=run_name, offline=os.environ.get("WANDB_MODE") != "online"))
    return loggers


def kind(logger) -> str:
    return type(logger).__name__.removesuffix("Logger").lower()  # tensorboard | csv | wandb


class MediaLog:
    """Images, matplotlib figures and histograms to every logger that takes them (TensorBoard, W&B)."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def __bool__(self) -> bool:
        return any(kind(logger) in ("tensorboard", "wandb") for logger in self.loggers)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """`image`: [3, H, W] or [H, W] floats in [0, 1]."""
        image = image.detach().float().clamp(0, 1).cpu()
        for logger in self.loggers:
            if kind(logger) == "tensorboard":
                logger.experiment.add_image(tag, image if image.dim() == 3 else image[None], step)
            elif kind(logger) == "wandb":
                import wandb

                logger.experiment.log({tag: wandb.Image(image.permute(1, 2, 0).numpy() if image.dim() == 3 else image.numpy())}, step=step)

    def figure(self, tag: str, fig, step: int) -> None:
        import matplotlib.pyplot as plt

        for logger in self.loggers:
            if kind(logger) == "tensorboard":
                logger.experiment.add_figure(tag, fig, step, close=False)
            elif kind(logger) == "wandb":
                import wandb

                logger.experiment.log({tag: wandb.Image(fig)}, step=step)
        plt.close(fig)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        values = values.detach().float().flatten().cpu()
        for logger in self.loggers:
            if kind(logger) == "tensorboard":
                logger.experiment.add_histogram(tag, values, step)
            elif kind(logger) == "wandb":
                import wandb

                logger.experiment.log({tag: wandb.Histogram(values.numpy())}, step=step)


def log_parameter_histograms(media: MediaLog, module: torch.nn.Module, step: int, what: str) -> None:
    """weights/<name> (what="weights") or gradients/<name> (what="gradients") for every trainable parameter."""
    for name, param in module.named_parameters():
        values = param if what == "weights" else param.grad
        if param.requires_grad and values is not None:
            media.histogram(f"{what}/{name}", values, step)
