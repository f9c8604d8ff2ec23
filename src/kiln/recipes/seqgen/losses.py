"""seqgen's losses: the original guide's autocorrelation loss and its combination with the MAE (its
`AutocorrelationLoss` and `CombinedMAEAutocorrLoss`)."""

from __future__ import annotations

import torch
from torch import Tensor


def autocorrelation(x: Tensor, max_lag: int) -> Tensor:
    """Sample autocorrelation of each sequence and channel at lags 1..max_lag: x [B, T, C] -> [B, max_lag, C].

    r_k = sum_t (x_t - m)(x_{t+k} - m) / sum_t (x_t - m)^2 with m the sequence's mean: statsmodels' `acf`
    (the biased estimator, as Box & Jenkins define it). A constant sequence has r_k = 0 (its variance is floored).
    """
    x = x.float()
    centred = x - x.mean(dim=1, keepdim=True)
    variance = centred.square().sum(dim=1).clamp_min(1e-8)                     # [B, C]
    lags = [(centred[:, k:] * centred[:, :-k]).sum(dim=1) for k in range(1, max_lag + 1)]
    return torch.stack(lags, dim=1) / variance[:, None]


class AutocorrelationLoss(torch.nn.Module):
    """Mean absolute difference between the autocorrelation functions (lags 1..max_lag) of prediction and target.

    The ACF is normalised by each sequence's own mean and variance, so this loss is blind to amplitude and
    offset: a prediction 2 * y + 3 scores exactly 0 against y. Alone it fixes the shape of the dynamics, not
    the values; pair it with a pointwise loss (CombinedMAEAutocorrLoss) when the values matter.
    """

    def __init__(self, max_lag: int = 10):
        super().__init__()
        self.max_lag = max_lag

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return (autocorrelation(y_pred, self.max_lag) - autocorrelation(y_true, self.max_lag)).abs().mean()


class CombinedMAEAutocorrLoss(torch.nn.Module):
    """alpha * MAE + (1 - alpha) * autocorrelation loss; returns (combined, mae, autocorr) as in the guide.
    alpha = 1 is the guide's pure-MAE training, alpha = 0 its pure-autocorrelation training."""

    def __init__(self, alpha: float = 0.5, max_lag: int = 10):
        super().__init__()
        self.alpha = alpha
        self.mae_loss = torch.nn.L1Loss()
        self.autocorr_loss = AutocorrelationLoss(max_lag=max_lag)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y_pred, y_true = y_pred.float(), y_true.float()
        mae = self.mae_loss(y_pred, y_true)
        autocorr = self.autocorr_loss(y_pred, y_true)
        return self.alpha * mae + (1 - self.alpha) * autocorr, mae, autocorr
