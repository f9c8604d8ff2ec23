"""The printer task: the LSTM corrector (or the ridge FIR alone) with the original guide's losses.

Training windows predict the error at every step; the loss skips the first `burn_in` steps, where the LSTM
has not yet seen enough history. Validation and test score the guide's sample: the error at each window's
last step, in mm. The ridge FIR baseline is fitted in closed form on the same training windows (Task.fit_data)
and kept with the weights, so every evaluation reports both models on the same split.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from kiln.engine.task import Task
from kiln.recipes.printer.config import PrinterConfig
from kiln.recipes.printer.model import RealTimeCorrector, RidgeFIR, StreamStep, WindowPredictor

AXES = ("x", "y")


def hybrid_loss(pred: Tensor, target: Tensor, kind: str, ratio: float | None) -> Tensor:
    """The guide's losses: mae, mse, or hybrid = ratio * MAE + (1 - ratio) * MSE (its HybridLoss)."""
    error = pred - target
    mae, mse = error.abs().mean(), error.square().mean()
    return mae if kind == "mae" else mse if kind == "mse" else ratio * mae + (1 - ratio) * mse


class PrinterTask(Task):
    console_metrics = ("loss", "mae", "r2")

    def __init__(self, cfg: PrinterConfig, info: dict):
        super().__init__()
        m, d = cfg.model, cfg.data
        features = len(info["feature_names"])
        self.settings = m
        self.ridge = RidgeFIR(d.sequence_length, features)
        self.model = RealTimeCorrector(features, m.hidden_size, m.num_layers, m.dropout) if m.arch == "lstm" else self.ridge
        self.stats = {k: info[k] for k in ("feature_mean", "feature_std", "error_mean", "error_std")}
        self.feature_names, self.sample_rate = list(info["feature_names"]), float(info["sample_rate"])
        self.register_buffer("error_mean", torch.tensor(info["error_mean"]))
        self.register_buffer("error_std", torch.tensor(info["error_std"]))

    def fit_data(self, train: dict[str, Tensor]) -> None:
        self.ridge.fit(train["input_features"], train["targets"], self.settings.ridge_alpha)

    def predict_last(self, x: Tensor) -> Tensor:
        """Errors in mm at each window's last step [B, 2]."""
        if isinstance(self.model, RidgeFIR):
            return self.model(x)
        return self.model(x)[0][:, -1].float() * self.error_std + self.error_mean

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, errors = batch["input_features"], batch["error_sequence"]
        out = self.model(x)[0].float()                                   # [B, L, 2] normalised
        target = (errors - self.error_mean) / self.error_std
        burn = min(self.settings.burn_in, x.shape[1] - 1)
        loss = hybrid_loss(out[:, burn:], target[:, burn:], self.settings.loss_type, self.settings.loss_ratio)
        return self.score(out[:, -1].detach() * self.error_std + self.error_mean, batch["targets"], loss)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        started = time.perf_counter()
        pred = self.predict_last(batch["input_features"])
        if pred.is_cuda:
            torch.cuda.synchronize()
        per_window_us = (time.perf_counter() - started) * 1e6 / len(pred)
        target = batch["targets"]
        loss = None
        if not isinstance(self.model, RidgeFIR):
            normalised = (pred - self.error_mean) / self.error_std
            loss = hybrid_loss(normalised, (target - self.error_mean) / self.error_std, self.settings.loss_type,
                               self.settings.loss_ratio)
        out = self.score(pred, target, loss)
        out["inference_us"] = torch.tensor(per_window_us)  # batched forward time per window (TensorBoard: inference time)
        return out

    def score(self, pred: Tensor, target: Tensor, loss: Tensor | None) -> dict[str, Tensor]:
        """Batch means the engine averages over an epoch; finish_metrics turns them into MAE (mm) and R2."""
        error = pred.float() - target
        out = {"loss": loss if loss is not None else error.abs().mean(), "mae": error.abs().mean()}
        for k, axis in enumerate(AXES):
            out[f"se_{axis}"] = error[:, k].square().mean()
            out[f"y_{axis}"] = target[:, k].mean()
            out[f"yy_{axis}"] = target[:, k].square().mean()
        return out

    def finish_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """R2 over both axes pooled (sum of squared errors over the sum of per-axis variances), RMSE in mm."""
        for split in ("train", "val"):
            if f"{split}_se_x" not in metrics:
                continue
            se = sum(metrics.pop(f"{split}_se_{a}") for a in AXES)
            var = sum(metrics.pop(f"{split}_yy_{a}") - metrics.pop(f"{split}_y_{a}") ** 2 for a in AXES)
            metrics[f"{split}_rmse"] = math.sqrt(se / 2)
            metrics[f"{split}_r2"] = 1 - se / max(var, 1e-18)
        return metrics

    def export_module(self, batch: dict[str, Tensor]):
        mean, std = torch.tensor(self.stats["feature_mean"]), torch.tensor(self.stats["feature_std"])
        raw = batch["input_features"].float() * std + mean
        return WindowPredictor(self.model, self.stats).eval(), (raw,)

    def stream_step(self) -> StreamStep:
        return StreamStep(self.model, self.stats).eval()


def build_task(cfg: PrinterConfig, info: dict) -> PrinterTask:
    return PrinterTask(cfg, info)
