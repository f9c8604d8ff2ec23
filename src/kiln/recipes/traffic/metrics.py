"""Evaluation metrics: Gaussian-mixture summaries, calibration, CRPS and point-forecast errors.

Mixture arguments follow losses.py: `means`, `stds`, `logits` shaped [..., K], targets shaped [...].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# -----------------------------------------------------------------------------
# mixture summaries


def mixture_mean(means: Tensor, logits: Tensor) -> Tensor:
    return (torch.softmax(logits, dim=-1) * means).sum(-1)


def mixture_std(means: Tensor, stds: Tensor, logits: Tensor) -> Tensor:
    """Law of total variance: E[var] + var[E]."""
    weights = torch.softmax(logits, dim=-1)
    mean = (weights * means).sum(-1, keepdim=True)
    # centred second moment rather than E[x^2] - E[x]^2, which cancels badly for large means
    return (weights * (stds.square() + (means - mean).square())).sum(-1).sqrt()


def mixture_cdf(means: Tensor, stds: Tensor, logits: Tensor, x: Tensor) -> Tensor:
    """P(X <= x), shaped like `x`."""
    weights = torch.softmax(logits, dim=-1)
    return (weights * torch.special.ndtr((x.unsqueeze(-1) - means) / stds)).sum(-1)


def pit(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """Probability integral transform: uniform on [0, 1] when the forecast is calibrated."""
    return mixture_cdf(means, stds, logits, target)


@torch.no_grad()
def central_interval(means: Tensor, stds: Tensor, logits: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """(lo, hi) with probability (1 - level) / 2 in each tail, found by bisection on the cdf."""
    dtype = stds.dtype
    means, stds, logits = means.double(), stds.double(), logits.double()
    tail = (1.0 - level) / 2
    quantiles = torch.tensor([tail, 1.0 - tail], dtype=torch.float64, device=means.device)
    quantiles = quantiles.view(2, *([1] * (means.dim() - 1)))
    # every component has essentially all its mass inside mu +- 10 sigma, so the quantile is in this bracket
    lo = (means - 10 * stds).amin(-1).expand(2, *means.shape[:-1]).clone()
    hi = (means + 10 * stds).amax(-1).expand(2, *means.shape[:-1]).clone()
    for _ in range(60):
        mid = (lo + hi) / 2
        below = mixture_cdf(means, stds, logits, mid) < quantiles
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    interval = ((lo + hi) / 2).to(dtype)
    return interval[0], interval[1]


# -----------------------------------------------------------------------------
# calibration


def dilate_mixture(means: Tensor, stds: Tensor, logits: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """The mixture stretched about its own mean by `scale` (broadcast against the target's shape [...]): every
    quantile q moves to mean + scale (q - mean), so the mean (the point forecast) stays and the spread scales."""
    mean = mixture_mean(means, logits).unsqueeze(-1)
    scale = scale.unsqueeze(-1)
    return mean + scale * (means - mean), scale * stds


@torch.no_grad()
def spread_scale_for_coverage(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor, level: float = 0.8,
                              bounds: tuple[float, float] = (0.1, 10.0), iterations: int = 40) -> Tensor:
    """Per index of the target's last dimension (e.g. each forecast step of [S, N, P] targets), the dilation
    scale (see dilate_mixture) whose central `level` interval covers a share `level` of the finite targets.
    Coverage grows with the scale, so it is found by bisection in log space; NaN targets are ignored."""
    means, stds, logits, target = means.double(), stds.double(), logits.double(), target.double()
    finite = torch.isfinite(target)
    target = torch.nan_to_num(target)
    lead = tuple(range(target.dim() - 1))  # every dimension but the last is pooled
    count = finite.sum(lead).clamp_min(1)
    mean = mixture_mean(means, logits)
    lo = torch.full(target.shape[-1:], math.log(bounds[0]), dtype=torch.float64, device=means.device)
    hi = torch.full_like(lo, math.log(bounds[1]))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        # the dilated cdf at y is the original cdf at mean + (y - mean) / scale
        u = mixture_cdf(means, stds, logits, mean + (target - mean) / mid.exp())
        covered = (((u - 0.5).abs() <= level / 2) & finite).sum(lead) / count
        lo, hi = torch.where(covered < level, mid, lo), torch.where(covered < level, hi, mid)
    return ((lo + hi) / 2).exp().float()


def interval_coverage(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor, level: float = 0.8) -> float:
    """Fraction of targets inside the central `level` interval."""
    # target is inside the central interval exactly when its PIT is within level/2 of the median
    u = pit(means.double(), stds.double(), logits.double(), target.double())
    return ((u - 0.5).abs() <= level / 2).double().mean().item()


def calibration_curve(
    means: Tensor, stds: Tensor, logits: Tensor, target: Tensor, levels: tuple[float, ...] = DEFAULT_LEVELS
) -> dict[str, float]:
    """Observed coverage for each nominal central-interval level, keyed like "0.1"; ideal is the diagonal."""
    return reliability_curve(pit(means.double(), stds.double(), logits.double(), target.double()), levels)


def reliability_curve(u: Tensor, levels: tuple[float, ...] = DEFAULT_LEVELS) -> dict[str, float]:
    """calibration_curve from PIT values u: the share within level/2 of 0.5 is the central interval's coverage."""
    distance = (u - 0.5).abs()
    return {f"{level:g}": (distance <= level / 2).double().mean().item() for level in levels}


def pit_histogram(u: Tensor, bins: int = 10) -> list[float]:
    """Share of PIT values in each of `bins` equal bins of [0, 1]; 1/bins each when calibrated. A U shape means
    too narrow forecasts, a hump too wide ones, a slope a biased median."""
    return (torch.histc(u.double(), bins, 0, 1) / u.numel()).tolist()


# -----------------------------------------------------------------------------
# CRPS


def _crps_a(m: Tensor, s: Tensor) -> Tensor:
    """A(m, s) = E|m + s Z| for Z ~ N(0, 1): 2 s phi(m/s) + m (2 Phi(m/s) - 1)."""
    z = m / s
    pdf = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
    return 2 * s * pdf + m * (2 * torch.special.ndtr(z) - 1)


def mixture_crps(means: Tensor, stds: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """Closed-form CRPS of a Gaussian mixture (Grimit et al. 2006), shaped like `target`. Lower is better."""
    weights = torch.softmax(logits, dim=-1)
    # E|X - y| minus half of E|X - X'| for two independent draws X, X' from the mixture
    to_target = (weights * _crps_a(target.unsqueeze(-1) - means, stds)).sum(-1)
    pair_weights = weights.unsqueeze(-1) * weights.unsqueeze(-2)
    pair_diff = means.unsqueeze(-1) - means.unsqueeze(-2)
    pair_std = (stds.square().unsqueeze(-1) + stds.square().unsqueeze(-2)).sqrt()
    spread = (pair_weights * _crps_a(pair_diff, pair_std)).sum((-2, -1))
    return to_target - 0.5 * spread


# -----------------------------------------------------------------------------
# point-forecast errors


def error_metrics(pred: Tensor, target: Tensor, dim: int | None = None) -> dict[str, Tensor]:
    """mae, rmse, mape (%, over non-zero targets; NaN if there are none) and r2, over everything or per index along
    `dim`; a NaN target (no reading) is left out."""
    # at least float32, so integer counts and half-precision outputs are averaged accurately
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    pred, target = pred.to(dtype), target.to(dtype)
    if dim is None:
        pred, target = pred.reshape(1, -1), target.reshape(1, -1)
    else:
        # one row per index along `dim`, every other dimension flattened into the columns
        pred = pred.movedim(dim, 0).reshape(pred.shape[dim], -1)
        target = target.movedim(dim, 0).reshape(target.shape[dim], -1)
    scored = torch.isfinite(target)
    count = scored.sum(-1)
    error = torch.where(scored, pred - target, 0)
    target = torch.where(scored, target, 0)
    nonzero = scored & (target != 0)
    # the where keeps 0/0 out of the sum; the count leaves zero targets out of the average
    relative = torch.where(nonzero, error.abs() / torch.where(nonzero, target.abs(), 1), 0)
    centred = torch.where(scored, target - target.sum(-1, keepdim=True) / count.unsqueeze(-1), 0)
    metrics = {
        "mae": error.abs().sum(-1) / count,
        "rmse": (error.square().sum(-1) / count).sqrt(),
        "mape": 100 * relative.sum(-1) / nonzero.sum(-1),
        "r2": 1 - error.square().sum(-1) / centred.square().sum(-1),
    }
    return {name: value.squeeze(0) if dim is None else value for name, value in metrics.items()}


def tgcn_metrics(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> dict[str, float]:
    """The T-GCN paper's `evaluation(a, b)` (Zhao et al. 2019) with a = truth, b = prediction, over the finite
    targets (every one of them pooled, as the paper's figures are; a NaN target is no reading)."""
    b = np.asarray(pred.detach().cpu() if isinstance(pred, Tensor) else pred, dtype=np.float64)
    a = np.asarray(target.detach().cpu() if isinstance(target, Tensor) else target, dtype=np.float64)
    scored = np.isfinite(a)
    a, b = a[scored], b[scored]
    error = a - b
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        # the Frobenius norm of a 2-D array is the 2-norm of its flattened values
        "accuracy": float(1 - np.linalg.norm(error.ravel()) / np.linalg.norm(a.ravel())),
        "r2": float(1 - np.sum(error**2) / np.sum((a - a.mean()) ** 2)),
        "var": float(1 - np.var(error) / np.var(a)),
    }
