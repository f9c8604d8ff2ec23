"""The printer task: the LSTM corrector (or the ridge FIR alone) with the seed's losses, and the test evaluation.

Training windows predict the error at every step; the loss skips the first `burn_in` steps, where the LSTM
has not yet seen enough history. Validation and test score the seed's sample: the error at each window's
last step, in mm. The ridge FIR baseline is fitted in closed form on the same training windows (Task.fit_data)
and kept with the weights, so every evaluation reports both models on the same split.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from kiln.engine.task import Evaluation, Task
from kiln.recipes.printer.config import PrinterConfig
from kiln.recipes.printer.model import RealTimeCorrector, RidgeFIR, StreamStep, WindowPredictor

AXES = ("x", "y")


def hybrid_loss(pred: Tensor, target: Tensor, kind: str, ratio: float) -> Tensor:
    """The seed's losses: mae, mse, or hybrid = ratio * MAE + (1 - ratio) * MSE (its HybridLoss)."""
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


# ---------------------------------------------------------------- evaluation

def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """Overall (axes pooled, as finish_metrics) and per-axis MAE, RMSE, R2 in mm, plus absolute-error percentiles."""
    error = pred - target
    var = target.var(0)
    out = {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
           "r2": float(1 - (error ** 2).mean(0).sum() / var.sum())}
    out["per_axis"] = {axis: {"mae": float(np.abs(error[:, k]).mean()), "rmse": float(np.sqrt((error[:, k] ** 2).mean())),
                              "r2": float(1 - (error[:, k] ** 2).mean() / var[k])} for k, axis in enumerate(AXES)}
    out["percentiles"] = {str(p): float(v) for p, v in zip((50, 90, 95, 99), np.percentile(np.abs(error), (50, 90, 95, 99)))}
    return out


@torch.no_grad()
def predict_windows(task: PrinterTask, x: Tensor, batch_size: int, model=None) -> np.ndarray:
    model = model or task.predict_last
    return torch.cat([model(x[i:i + batch_size].to(task.device)).float().cpu() for i in range(0, len(x), batch_size)]).numpy()


@contextmanager
def one_thread():
    """One sample (or one sequence) at a time multiplies tiny matrices: more threads only wait on each other, and on
    a busy CPU their spinning made a 16,000-step sequence take minutes instead of seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def predict_stream(task: PrinterTask, features: Tensor) -> np.ndarray:
    """Errors (mm) [T, 2] for a whole trajectory, state carried from its first sample: what the streaming
    predictor computes one sample at a time, in one call."""
    step = task.stream_step()
    x = (features.float().to(task.device) - step.feature_mean) / step.feature_std
    with one_thread():
        out, _ = task.model(x[None])
    return (out[0] * step.error_std + step.error_mean).cpu().numpy()


@torch.no_grad()
def streaming_latency(task: PrinterTask, features: Tensor, samples: int = 300) -> np.ndarray:
    """Per-sample time (ms) of eager PyTorch streaming (one LSTM step with the state kept)."""
    step = copy.deepcopy(task.stream_step()).cpu()
    layers, hidden = task.model.lstm.num_layers, task.model.lstm.hidden_size
    h = c = torch.zeros(layers, 1, hidden)
    times = []
    with one_thread():
        for row in features[:samples].float():
            started = time.perf_counter()
            _, h, c = step(row[None], h, c)
            times.append((time.perf_counter() - started) * 1000)
    return np.array(times[10:])


def evaluate(task: PrinterTask, splits, cfg: PrinterConfig, options: dict) -> Evaluation:
    """Test windows (the seed's samples) for the model and the ridge FIR, then the LSTM streamed over every
    sample of each held-out layer. The report draws from the same predictions (outputs)."""
    from pathlib import Path

    from kiln.recipes.printer.data import read_split

    task = task.float()
    test = splits.test
    batch = cfg.train.eval_batch_size
    target = test["targets"].numpy()
    pred = predict_windows(task, test["input_features"], batch)
    ridge = predict_windows(task, test["input_features"], batch, model=task.ridge)
    results = {"model": cfg.model.arch, "unit": "mm", "samples": len(target), **regression_metrics(pred, target)}
    ridge_metrics = regression_metrics(ridge, target)
    results.update({"ridge_r2": ridge_metrics["r2"], "ridge_mae": ridge_metrics["mae"], "ridge_rmse": ridge_metrics["rmse"],
                    "ridge": ridge_metrics, "error_rms_mm": float(np.sqrt((target ** 2).sum(1).mean()))})
    stream = read_split(Path(cfg.data.dir) / "processed" / "test")
    results["test_models"] = sorted(set(stream["models"]))
    results["test_layers"] = len(stream["models"])
    outputs = {"target": target, "pred": pred, "ridge": ridge, "stream": stream}
    if isinstance(task.model, RealTimeCorrector):
        offsets, warmup = stream["offsets"], stream["warmup"]
        layers = range(len(offsets) - 1)
        # per held-out layer, after its warm-up
        outputs["streamed"] = [predict_stream(task, stream["features"][offsets[j]:offsets[j + 1]])[warmup[j]:] for j in layers]
        truth = np.concatenate([stream["errors"][offsets[j] + warmup[j]:offsets[j + 1]].numpy() for j in layers])
        results["stream"] = regression_metrics(np.concatenate(outputs["streamed"]), truth)
        results["stream_r2"] = results["stream"]["r2"]
        latency = streaming_latency(task, stream["features"])
        results["inference"] = {"avg_ms": float(latency.mean()), "p50_ms": float(np.median(latency)),
                                "p99_ms": float(np.percentile(latency, 99)), "throughput_per_s": float(1000 / latency.mean()),
                                "how": "eager PyTorch, one LSTM step per sample, 1 thread"}
    return Evaluation(results, outputs)
