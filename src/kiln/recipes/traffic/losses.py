"""STMGT's training losses: the Gaussian-mixture forecast's negative log-likelihood and its regularisers.

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
