"""Training losses shared by recipes: Gaussian-mixture forecasts (traffic) and sequence losses (seqgen).

A mixture forecast is a K-component mixture per element: `means`, `stds` and `logits` are shaped [..., K]
and `target` is shaped [...]. Everything is computed in log space so that narrow components and
far-away targets give large but finite losses instead of inf/NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def mixture_log_prob(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """Log density of the mixture at `target`, shaped like `target`."""
    z = (target.unsqueeze(-1) - means) / stds
    component_log_prob = -0.5 * z.square() - stds.log() - LOG_SQRT_2PI
    # logsumexp over components never exponentiates a very negative log density to 0 before the log
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + component_log_prob, dim=-1)


def mixture_nll(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood; with a mask, the mean over its True entries only (0 if there are none)."""
    if mask is None:
        return -mixture_log_prob(means, stds, logits, target).mean()
    mask = mask.bool().expand_as(target)
    # index before computing so masked-out entries (often NaN targets) never reach the graph
    log_prob = mixture_log_prob(means[mask], stds[mask], logits[mask], target[mask])
    return -log_prob.sum() / mask.sum().clamp_min(1)


def mixture_diversity(means: Tensor, stds: Tensor) -> Tensor:
    """-mean over component pairs i<j of tanh(|mu_i - mu_j| / (sigma_i + sigma_j)): in [-1, 0], lower when spread out."""
    k = means.shape[-1]
    if k < 2:
        return means.new_zeros(())
    i, j = torch.triu_indices(k, k, offset=1, device=means.device)
    separation = (means[..., i] - means[..., j]).abs() / (stds[..., i] + stds[..., j])
    # tanh keeps the reward bounded, so it cannot win by pushing components off to infinity
    return -torch.tanh(separation).mean()


def mixture_entropy(logits: Tensor) -> Tensor:
    """Mean entropy (nats) of the mixture weights; a small positive weight on it makes forecasts commit."""
    log_weights = torch.log_softmax(logits, dim=-1)
    # clamp turns a -inf log weight (logit -inf) into a finite one, so 0 * log 0 counts as 0, not NaN
    log_weights = log_weights.clamp_min(torch.finfo(log_weights.dtype).min)
    return -(log_weights.exp() * log_weights).sum(-1).mean()


def mixture_usage_kl(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(mean mixture weights || uniform) over the (masked) forecasts: 0 when every component carries 1/K of
    the weight on average, log K when one carries all of it. A usage-balancing penalty against collapse."""
    weights = torch.softmax(logits, dim=-1)
    if mask is not None:
        weights = weights[mask.bool().expand(weights.shape[:-1])]
    usage = weights.reshape(-1, weights.shape[-1]).mean(0)
    return (usage * (usage * usage.numel()).clamp_min(torch.finfo(usage.dtype).tiny).log()).sum()


# ---------------------------------------------------------------- sequence losses (seqgen)

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
    """alpha * MAE + (1 - alpha) * autocorrelation loss; returns (combined, mae, autocorr) as the seed does.
    alpha = 1 is the seed's pure-MAE training, alpha = 0 its pure-autocorrelation training."""

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
