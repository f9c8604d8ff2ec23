"""What a recipe hands the engine: a Task (model + steps) and its data Splits; what its evaluation hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from kiln.engine.media import MediaLog


class Task(nn.Module):
    """A recipe's model plus its training and validation steps, LightningModule style.

    Subclasses implement `training_step(batch) -> dict` (must contain "loss") and may override
    `validation_step`. Returned values are batch means; the engine averages them over the epoch,
    weighted by batch size, and logs them as train_<name> / val_<name>. The engine owns devices,
    optimizers, schedules, precision, checkpoints and logging. Every other hook is optional.
    """

    # Metrics shown on the per-epoch console line, in this order ("loss" -> "Train Loss: ...").
    console_metrics: tuple[str, ...] = ("loss",)
    # An extra per-epoch CSV some seeds expect, with exactly these columns: (file name, history columns), or
    # (file name, {seed header: history column}) where the seed names them differently ("Train Loss": "train_loss").
    history_file: tuple[str, tuple[str, ...] | dict[str, str]] | None = None
    # Extra names the seed gives the engine's weight files, hard links in the run directory (no extra disk):
    # {"best_model.pt": ("best_model.pth",), "final_model.pt": (...), "checkpoints/epoch_{epoch:03d}.ckpt": ("checkpoint_epoch_{epoch}.pth",)}
    file_aliases: dict[str, tuple[str, ...]] = {}

    def forward(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        # One entry point so Fabric's wrapper (precision, devices, DDP) covers every step.
        return self.training_step(batch) if stage == "train" else self.validation_step(batch)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.training_step(batch)

    @property
    def device(self) -> torch.device:
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), torch.empty(0))
        return tensor.device

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Called before each training epoch (0-based `epoch`; again for the resumed one after --resume): for
        schedules of recipe knobs across a run or phase, e.g. teacher forcing decaying linearly over its epochs."""

    def fit_data(self, train: dict[str, Tensor]) -> None:
        """Closed-form parts fitted on the training split before the loop (e.g. a historical average)."""

    def calibrate(self, val: dict[str, Tensor] | Dataset) -> None:
        """Post-hoc parts fitted on the validation split (e.g. temperature scaling, a spread scale for intervals).
        Called on the weights about to be saved as best_model.pt or final_model.pt, in eval mode under no_grad,
        never with the test split; what it fits must live in the task's state_dict (buffers) to be saved."""

    def finish_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Epoch means -> logged metrics (e.g. rmse = sqrt of the mean squared error)."""
        return metrics

    def epoch_warnings(self, metrics: dict[str, float]) -> list[str]:
        """Problems worth a warning line after an epoch (e.g. a collapsed mixture)."""
        return []

    def epoch_line(self, epoch: int, max_epochs: int, metrics: dict[str, float], best: bool) -> str:
        """The seeds' form: `Epoch 3/100 - Train Loss: 0.5, Train Acc: 0.8 Val Loss: 0.6, Val Acc: 0.7 *`."""
        parts = []
        for split in ("train", "val"):
            shown = [f"{split.title()} {name.replace('_', ' ').title()}: {metrics[f'{split}_{name}']:.4f}"
                     for name in self.console_metrics if f"{split}_{name}" in metrics]
            parts.append(", ".join(shown))
        return f"Epoch {epoch}/{max_epochs} - {' '.join(parts)}{' *' if best else ''}"

    def log_media(self, media: MediaLog, batch: dict[str, Tensor], step: int) -> None:
        """Images, figures and histograms for TensorBoard/W&B at each validation, from the first validation
        batch (on the training device). Runs on rank 0 only, under no_grad."""

    def export_module(self, batch: dict[str, Tensor]) -> tuple[nn.Module, tuple[Tensor, ...]] | None:
        """A plain tensor-in, tensor-out module for `kiln export`, plus its inputs built from `batch` (held-out
        samples, batch dimension first). None: this task has nothing to export."""
        return None


@dataclass
class Splits:
    """A dataset: per split either in-memory tensors (a dict of equal-length tensors) or a map-style
    dataset whose items are such dicts (for data that does not fit in memory), plus dataset.json."""

    train: dict[str, Tensor] | Dataset
    val: dict[str, Tensor] | Dataset
    test: dict[str, Tensor] | Dataset
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """What a recipe's evaluate returns: `results` (written to test_results.json) and the held-out `outputs` its
    report draws from (predictions on the test split, never written), so the report need not run the model over
    the split again."""

    results: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
