"""What a recipe hands the engine: a Task (model + steps) and in-memory data splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn


class Task(nn.Module):
    """A recipe's model plus its training and validation steps, LightningModule style.

    Subclasses implement `training_step(batch) -> dict` (must contain "loss") and may override
    `validation_step`. Returned values are batch means; the engine averages them over the epoch,
    weighted by batch size, and logs them as train_<name> / val_<name>. The engine owns devices,
    optimizers, schedules, precision, checkpoints and logging.
    """

    # Metrics shown on the per-epoch console line, in this order ("loss" -> "Train Loss: ...").
    console_metrics: tuple[str, ...] = ("loss",)
    # An extra per-epoch CSV some seeds expect, with exactly these columns: (file name, columns).
    history_file: tuple[str, tuple[str, ...]] | None = None

    def forward(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        # One entry point so Fabric's wrapper (precision, devices, DDP) covers every step.
        return self.training_step(batch) if stage == "train" else self.validation_step(batch)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.training_step(batch)

    def fit_data(self, train: dict[str, Tensor]) -> None:
        """Closed-form parts fitted on the training split before the loop (e.g. a historical average)."""

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

    def export_state(self) -> dict[str, Tensor]:
        """Weights written to best_model.pt / final_model.pt."""
        return self.state_dict()


@dataclass
class Splits:
    """A dataset in memory: tensors per split with equal first dimension, plus dataset.json."""

    train: dict[str, Tensor]
    val: dict[str, Tensor]
    test: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class TensorBatches:
    """Mini-batches gathered from in-memory tensors: far cheaper per step than a DataLoader.

    The shuffle order of epoch e depends only on (seed, e), so a resumed run replays it exactly
    and can skip the batches it had already done.
    """

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, shuffle: bool, seed: int = 0):
        self.tensors, self.batch_size, self.shuffle, self.seed = tensors, batch_size, shuffle, seed
        self.size = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.size)
            if self.shuffle:
                yield {k: v[order[lo:hi]] for k, v in self.tensors.items()}
            else:
                yield {k: v[lo:hi] for k, v in self.tensors.items()}
