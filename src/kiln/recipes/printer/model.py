"""The trajectory-error models: the original guide's LSTM corrector and a ridge FIR baseline, plus their deployable
forms.

Both read windows of reference features [batch, seq, features] (normalised with the training split's
statistics) and predict the carriage's position error (actual - reference, normalised per axis).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RealTimeCorrector(nn.Module):
    """LSTM -> linear head at every step (the guide's RealTimeCorrector).

    A prediction at step t depends only on steps <= t, so the same weights serve windows (training, the
    guide's exported module) and an endless stream (one LSTM step per sample with the state kept).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # x: [B, T, F] -> errors [B, T, 2], state (h, c): [layers, B, hidden] each
        out, state = self.lstm(x, state)
        return self.head(out), state


class RidgeFIR(nn.Module):
    """A linear FIR filter over the whole window, fitted in closed form by ridge regression (the baseline).

    error[t] = sum_k sum_f W[k, f] x[t - L + 1 + k, f] + b, with the penalty on standardised columns.
    It has no trainable parameters: the engine fits it with Task.fit_data and skips the training loop.
    """

    def __init__(self, sequence_length: int, input_size: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(sequence_length * input_size, 2))
        self.register_buffer("bias", torch.zeros(2))

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor, alpha: float) -> None:
        """x [N, L, F], y [N, 2]: W = (Z'Z + alpha N I)^-1 Z'(y - mean y) on standardised columns Z, in float64."""
        flat = x.flatten(1).double()
        mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
        z = (flat - mean) / std
        gram = z.T @ z + alpha * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
        y_mean = y.double().mean(0)
        w = torch.linalg.solve(gram, z.T @ (y.double() - y_mean)) / std[:, None]
        self.weight.copy_(w)
        self.bias.copy_(y_mean - mean @ w)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, L, F] -> error at the window's last step [B, 2]
        return x.flatten(1) @ self.weight.to(x.dtype) + self.bias.to(x.dtype)


class WindowPredictor(nn.Module):
    """Deployable form (kiln export): raw `input_features` [batch, seq, features] in mm, mm/s, mm/s^2 ->
    `error_predictions` [batch, 2] in mm at the window's last step. Normalisation is inside."""

    input_names, output_names = ("input_features",), ("error_predictions",)  # the guide's ONNX names

    def __init__(self, model: nn.Module, stats: dict):
        super().__init__()
        self.model = model
        self.register_buffer("feature_mean", torch.tensor(stats["feature_mean"], dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(stats["feature_std"], dtype=torch.float32))
        self.register_buffer("error_mean", torch.tensor(stats["error_mean"], dtype=torch.float32))
        self.register_buffer("error_std", torch.tensor(stats["error_std"], dtype=torch.float32))

    def forward(self, input_features: Tensor) -> Tensor:
        x = (input_features - self.feature_mean) / self.feature_std
        out = self.model(x)[0][:, -1] if isinstance(self.model, RealTimeCorrector) else self.model(x)
        return out * self.error_std + self.error_mean


class StreamStep(WindowPredictor):
    """One streaming step (the deployment at the sample rate): raw features [1, F] and the LSTM state
    (h, c) [layers, 1, hidden] -> error [1, 2] in mm and the next state."""

    input_names, output_names = ("features", "h", "c"), ("error_predictions", "h_next", "c_next")

    def forward(self, features: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = ((features - self.feature_mean) / self.feature_std)[:, None]
        out, (h, c) = self.model(x, (h, c))
        return out[:, -1] * self.error_std + self.error_mean, h, c
