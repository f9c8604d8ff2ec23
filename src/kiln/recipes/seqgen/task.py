"""The seqgen task: the generator, its loss (MAE, autocorrelation or both), the teacher-forcing schedule and the
original guide's file names. The free-running test evaluation is in evaluation.py."""

from __future__ import annotations

from torch import Tensor

from kiln.engine.task import Task
from kiln.recipes.seqgen.config import SeqgenConfig
from kiln.recipes.seqgen.losses import CombinedMAEAutocorrLoss
from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator

# The guide's training_metrics.csv columns -> kiln history columns (pure losses, then the combined script's).
PURE_COLUMNS = {"Epoch": "epoch", "Train Loss": "train_loss", "Validation Loss": "val_loss", "Test Loss": "test_loss",
                "Learning Rate": "lr"}
COMBINED_COLUMNS = {"Epoch": "epoch", "Train Loss": "train_loss", "Train MAE Loss": "train_mae",
                    "Train Autocorr Loss": "train_autocorr", "Validation Loss": "val_loss", "Validation MAE Loss": "val_mae",
                    "Validation Autocorr Loss": "val_autocorr", "Test Loss": "test_loss", "Test MAE Loss": "test_mae",
                    "Test Autocorr Loss": "test_autocorr", "Learning Rate": "lr"}
# The guide's weight files: best_model_combined.pth is its name for continuing training from the best model.
GUIDE_FILES = {"best_model.pt": ("best_model.pth", "best_model_combined.pth"), "final_model.pt": ("final_model.pth",),
               "checkpoints/epoch_{epoch:03d}.ckpt": ("checkpoint_epoch_{epoch}.pth",)}
LOSS_ALPHA = {"mae": 1.0, "autocorr": 0.0}  # the pure scripts are the combined loss at alpha 1 and 0


def teacher_forcing_ratio(epoch: int, total_epochs: int, start: float, end: float) -> float:
    """The guide's schedule: linear from `start` at epoch 0 towards `end` at epoch total_epochs (0-based epochs)."""
    return max(end, start - (start - end) * epoch / total_epochs)


class SeqgenTask(Task):
    console_metrics = ("loss", "mae", "autocorr")
    file_aliases = GUIDE_FILES

    def __init__(self, cfg: SeqgenConfig, info: dict):
        super().__init__()
        m = cfg.model
        self.model = StreamlinedSequenceGenerator(hidden_size=m.hidden_size, num_layers=m.num_layers, dropout=m.dropout)
        self.criterion = CombinedMAEAutocorrLoss(alpha=LOSS_ALPHA.get(m.loss, m.alpha), max_lag=m.max_lag)
        self.settings = m
        self.teacher_forcing = m.teacher_forcing_start
        self.history_file = ("training_metrics.csv", COMBINED_COLUMNS if m.loss == "combined" else PURE_COLUMNS)

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        m = self.settings
        self.teacher_forcing = teacher_forcing_ratio(epoch, max_epochs, m.teacher_forcing_start, m.teacher_forcing_end)

    def losses(self, pred: Tensor, y: Tensor) -> dict[str, Tensor]:
        combined, mae, autocorr = self.criterion(pred, y)
        return {"loss": combined, "mae": mae, "autocorr": autocorr}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        m = self.settings
        sample = self.model.rollout if m.sampling == "sequential" else self.model.teacher_forced
        pred = sample(batch["params"], batch["y"], self.teacher_forcing, m.noise_level)
        return self.losses(pred, batch["y"])

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Free-running: the Validation (and Test) Loss measure generation from the parameters alone."""
        return self.losses(self.model(batch["params"]), batch["y"])


def build_task(cfg: SeqgenConfig, info: dict) -> SeqgenTask:
    return SeqgenTask(cfg, info)
