"""Reference forecasters that need no gradient training: persistence, historical average, linear SVR.

They run in every traffic evaluation on the same test windows as the trained model, so one
test_results.json holds the whole comparison table.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn


def slot_means(x: Tensor, slot: Tensor, num_slots: int) -> Tensor:
    """Mean speed per (time-of-day slot, node) from windows x [S, N, T] with slots [S, T+P] -> [num_slots, N].
    Each window contributes its first step, so every training time step counts once; unseen slots get the overall mean."""
    first, s = x[:, :, 0], slot[:, 0]
    sums = torch.zeros(num_slots, x.shape[1], dtype=torch.float64).index_add_(0, s, first.double())
    counts = torch.zeros(num_slots, dtype=torch.float64).index_add_(0, s, torch.ones_like(s, dtype=torch.float64))
    overall = first.double().mean(0)
    return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], overall).float()


class HistoricalAverage(nn.Module):
    """Forecast = the training split's mean speed at the same time of day and node (no trainable parameters)."""

    def __init__(self, num_nodes: int, steps_per_day: int, seq_len: int):
        super().__init__()
        self.steps_per_day, self.seq_len = steps_per_day, seq_len
        self.register_buffer("table", torch.zeros(steps_per_day, num_nodes))

    def fit(self, x: Tensor, slot: Tensor) -> None:
        self.table.copy_(slot_means(x, slot, self.steps_per_day))

    def forward(self, slot: Tensor) -> Tensor:
        """slot [B, T+P] -> normalised forecasts [B, N, P]."""
        return self.table[slot[:, self.seq_len:]].transpose(1, 2)


def tgcn_windows(series: np.ndarray, seq_len: int, pre_len: int) -> tuple[np.ndarray, np.ndarray]:
    """T-GCN's preprocess_data windows of one segment: range(len - seq - pre) -> X [n, seq, N], Y [n, pre, N]."""
    n = len(series) - seq_len - pre_len
    idx = np.arange(n)[:, None]
    return series[idx + np.arange(seq_len)], series[idx + seq_len + np.arange(pre_len)]


def linear_svr(speed: np.ndarray, train_end: int, seq_len: int, pre_len: int, jobs: int = 1,
               log: Callable[[str], None] = print) -> np.ndarray:
    """T-GCN's SVR baseline (baselines.py): per node, a linear SVR maps the last seq_len speeds to the mean of the
    next pre_len, fitted on the first train_end steps; the forecast repeats over the horizon. Returns predictions
    for the test segment's windows [n, pre_len, N].

    T-GCN fits libsvm's SVR(kernel='linear') (epsilon-insensitive loss, epsilon 0.1, C 1) on raw mph, which
    converges very slowly: every input is ~60 mph, so the kernel matrix is nearly rank one. The objective's bias
    is free, so centring inputs and targets leaves the optimal weights unchanged; kiln centres them and solves the
    same problem with liblinear (LinearSVR: the same loss, epsilon and C; its bias is a feature of the centred
    problem, where it is close to 0, so its small penalty barely moves the optimum). Nodes are fitted in parallel,
    with a progress bar (engine/progress.py) over them."""
    from joblib import Parallel, delayed

    from kiln.engine.progress import track

    train_x, train_y = tgcn_windows(speed[:train_end], seq_len, pre_len)
    test_x, _ = tgcn_windows(speed[train_end:], seq_len, pre_len)
    target = train_y.mean(1)
    fits = Parallel(n_jobs=jobs, return_as="generator")(delayed(fit_linear_svr)(train_x[:, :, j], target[:, j], test_x[:, :, j])
                                                        for j in range(speed.shape[1]))
    pred = list(track(fits, f"Linear SVR per detector, {pre_len}-step horizon", speed.shape[1], log))
    return np.repeat(np.stack(pred, -1)[:, None, :], pre_len, axis=1)


def fit_linear_svr(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, epsilon: float = 0.1, c: float = 1.0) -> np.ndarray:
    """min 1/2 |w|^2 + C sum max(0, |y - x w - b| - epsilon) by liblinear on centred data -> predictions at x_new."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVR

    x_mean, y_mean = x.mean(0), y.mean()
    model = LinearSVR(epsilon=epsilon, C=c, loss="epsilon_insensitive", dual=True, tol=1e-5, max_iter=100_000, random_state=0)
    with warnings.catch_warnings():  # at the iteration cap the objective is within ~1e-5 of libsvm's (docs/traffic.md)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x - x_mean, y - y_mean)
    return model.predict(x_new - x_mean) + y_mean


def tgcn_reference_tables(speed: np.ndarray, horizons: dict[str, int], seq_len: int = 12, jobs: int = 1,
                          log: Callable[[str], None] = print) -> dict[str, dict]:
    """Persistence and T-GCN's linear SVR under the T-GCN protocol (80/20, metrics pooled over steps 1..h).
    The SVR fits one model per node and horizon (minutes on a CPU), so datasets store the result."""
    from kiln.recipes.traffic.metrics import tgcn_metrics

    train_end = int(len(speed) * 0.8)
    tables: dict[str, dict] = {"persistence": {}, "linear_svr": {}}
    for name, h in horizons.items():
        x, truth = tgcn_windows(speed[train_end:], seq_len, h)
        flat = truth.reshape(-1, truth.shape[-1])
        last = np.repeat(x[:, -1:, :], h, axis=1).reshape(flat.shape)
        tables["persistence"][name] = {k: round(v, 6) for k, v in tgcn_metrics(last, flat).items()}
        svr = linear_svr(speed, train_end, seq_len, h, jobs, log).reshape(flat.shape)
        tables["linear_svr"][name] = {k: round(v, 6) for k, v in tgcn_metrics(svr, flat).items()}
    return tables
