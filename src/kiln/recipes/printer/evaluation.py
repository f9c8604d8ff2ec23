"""Stage 4: the held-out test split, for the model and the ridge FIR baseline on the same windows.

- Windows (the original guide's samples): the error at each test window's last step, predicted by the model and
  by the ridge FIR fitted beside it; MAE, RMSE and R2 in mm, both axes pooled and per axis, and percentiles of the
  absolute error.
- Streams: the LSTM run over every sample of each held-out layer with its state carried from the layer's warm-up
  (what the streaming predictor computes), and the per-sample latency of one LSTM step.

The headline is the windows' R2 against the ridge FIR's.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kiln.engine.batches import predict
from kiln.engine.task import Evaluation, Splits
from kiln.recipes.printer.config import PrinterConfig
from kiln.recipes.printer.data import read_split
from kiln.recipes.printer.model import RealTimeCorrector
from kiln.recipes.printer.task import AXES, PrinterTask


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


def predict_windows(task: PrinterTask, x: Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """Errors (mm) at each window's last step [N, 2], of the model ("pred") and the ridge FIR ("ridge"), in one pass."""
    def step(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"pred": task.predict_last(batch["input_features"]), "ridge": task.ridge(batch["input_features"])}

    return {k: v.numpy() for k, v in predict({"input_features": x}, step, batch_size, task.device).items()}


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


def stream_layers(task: PrinterTask, stream: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """The LSTM streamed over each held-out layer from its first sample: per layer the predictions after its warm-up,
    and the true errors of those samples, concatenated."""
    offsets, warmup = stream["offsets"], stream["warmup"]
    layers = range(len(offsets) - 1)
    streamed = [predict_stream(task, stream["features"][offsets[j]:offsets[j + 1]])[warmup[j]:] for j in layers]
    truth = np.concatenate([stream["errors"][offsets[j] + warmup[j]:offsets[j + 1]].numpy() for j in layers])
    return streamed, truth


@torch.no_grad()
def streaming_latency(task: PrinterTask, features: Tensor, samples: int = 300) -> dict[str, Any]:
    """Per-sample time of eager PyTorch streaming (one LSTM step with the state kept); the first 10 steps warm up."""
    step = copy.deepcopy(task.stream_step()).cpu()
    layers, hidden = task.model.lstm.num_layers, task.model.lstm.hidden_size
    h = c = torch.zeros(layers, 1, hidden)
    times = []
    with one_thread():
        for row in features[:samples].float():
            started = time.perf_counter()
            _, h, c = step(row[None], h, c)
            times.append((time.perf_counter() - started) * 1000)
    ms = np.array(times[10:])
    return {"avg_ms": float(ms.mean()), "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "throughput_per_s": float(1000 / ms.mean()), "how": "eager PyTorch, one LSTM step per sample, 1 thread"}


def evaluate(task: PrinterTask, splits: Splits, cfg: PrinterConfig, options: dict) -> Evaluation:
    """Test windows for the model and the ridge FIR, then (an LSTM) streamed over every sample of each held-out layer.
    The report draws from the same predictions (outputs)."""
    task = task.float()
    target = splits.test["targets"].numpy()
    windows = predict_windows(task, splits.test["input_features"], cfg.train.eval_batch_size)
    ridge = regression_metrics(windows["ridge"], target)
    results = {"model": cfg.model.arch, "unit": "mm", "samples": len(target), **regression_metrics(windows["pred"], target),
               "ridge_r2": ridge["r2"], "ridge_mae": ridge["mae"], "ridge_rmse": ridge["rmse"], "ridge": ridge,
               "error_rms_mm": float(np.sqrt((target ** 2).sum(1).mean()))}
    stream = read_split(Path(cfg.data.dir) / "processed" / "test")
    results["test_models"] = sorted(set(stream["models"]))
    results["test_layers"] = len(stream["models"])
    outputs = {"target": target, **windows, "stream": stream}
    if isinstance(task.model, RealTimeCorrector):
        outputs["streamed"], truth = stream_layers(task, stream)
        results["stream"] = regression_metrics(np.concatenate(outputs["streamed"]), truth)
        results["stream_r2"] = results["stream"]["r2"]
        results["inference"] = streaming_latency(task, stream["features"])
    return Evaluation(results, outputs)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """R2 on the held-out test windows against the ridge FIR's on the same windows (both in test_results.json)."""
    return {"metric": "test R2", "value": results["r2"], "baseline": "ridge FIR", "baseline_value": results["ridge_r2"],
            "higher_is_better": True}
