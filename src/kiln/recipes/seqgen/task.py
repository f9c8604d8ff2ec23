"""The seqgen task: the generator, its loss (MAE, autocorrelation or both), the teacher-forcing schedule, the
seed's file names, and the free-running test evaluation beside the k-NN and mean-sequence baselines."""

from __future__ import annotations

import torch
from torch import Tensor

from kiln.engine.task import Evaluation, Task
from kiln.recipes.seqgen.losses import CombinedMAEAutocorrLoss
from kiln.recipes.seqgen.config import SeqgenConfig
from kiln.recipes.seqgen.evaluation import choose_k, generation_metrics, nearest_neighbour_mean
from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator

# The seed's training_metrics.csv columns -> kiln history columns (pure losses, then the combined script's).
PURE_COLUMNS = {"Epoch": "epoch", "Train Loss": "train_loss", "Validation Loss": "val_loss", "Test Loss": "test_loss",
                "Learning Rate": "lr"}
COMBINED_COLUMNS = {"Epoch": "epoch", "Train Loss": "train_loss", "Train MAE Loss": "train_mae",
                    "Train Autocorr Loss": "train_autocorr", "Validation Loss": "val_loss", "Validation MAE Loss": "val_mae",
                    "Validation Autocorr Loss": "val_autocorr", "Test Loss": "test_loss", "Test MAE Loss": "test_mae",
                    "Test Autocorr Loss": "test_autocorr", "Learning Rate": "lr"}
# The seed's weight files: best_model_combined.pth is its name for continuing training from the best model.
SEED_FILES = {"best_model.pt": ("best_model.pth", "best_model_combined.pth"), "final_model.pt": ("final_model.pth",),
              "checkpoints/epoch_{epoch:03d}.ckpt": ("checkpoint_epoch_{epoch}.pth",)}
LOSS_ALPHA = {"mae": 1.0, "autocorr": 0.0}  # the pure scripts are the combined loss at alpha 1 and 0


def teacher_forcing_ratio(epoch: int, total_epochs: int, start: float, end: float) -> float:
    """The seed's schedule: linear from `start` at epoch 0 towards `end` at epoch total_epochs (0-based epochs)."""
    return max(end, start - (start - end) * epoch / total_epochs)


class SeqgenTask(Task):
    console_metrics = ("loss", "mae", "autocorr")
    file_aliases = SEED_FILES

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


@torch.no_grad()
def generate(task: SeqgenTask, params: Tensor, batch_size: int) -> Tensor:
    """Free-running sequences for z-scored parameters [N, 2] -> [N, 151, 5] (z-scored), on the CPU."""
    task.eval()
    return torch.cat([task.model(chunk.to(task.device)).float().cpu() for chunk in params.split(batch_size)])


@torch.no_grad()
def evaluate(task: SeqgenTask, splits, cfg: SeqgenConfig, options: dict) -> Evaluation:
    """Free-running metrics of the model and of both baselines on the test split (same sequences, same metrics);
    the report draws some of the same sequences (outputs)."""
    train, val, test = splits.train, splits.val, splits.test
    max_lag = cfg.model.max_lag
    pred = generate(task, test["params"], cfg.train.eval_batch_size)
    k, val_maes = choose_k(train, val)
    knn = nearest_neighbour_mean(train["params"], train["y"], test["params"], k)
    mean = train["y"].mean(0, keepdim=True).expand_as(test["y"])
    results = {"loss": cfg.model.loss, "samples": len(test["y"]), "units": "z-scored components (training-split std)",
               "max_lag": max_lag, "free_running": generation_metrics(pred, test["y"], max_lag),
               "knn": generation_metrics(knn, test["y"], max_lag), "knn_k": k,
               "knn_val_mae": {str(key): round(v, 6) for key, v in val_maes.items()},
               "mean_sequence": generation_metrics(mean, test["y"], max_lag)}
    return Evaluation(results, {"free_running": pred, "knn": knn})
