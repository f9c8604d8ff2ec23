"""How good a conditional generator is, on the test split, free-running: the model and its baselines alike.

Every metric compares a generated sequence with the true sequence of the same parameters, in z-scored
component units (each component divided by its training-split std, so all five count alike):

- mae: mean absolute error over steps and components.
- acf_error: mean |ACF_generated - ACF_true| over lags 1..max_lag (the autocorrelation loss's value).
- spectral_distance: per sequence and component, sum_f |P_gen(f) - P_true(f)| / sum_f P_true(f) of the
  Welch power spectra (scipy.signal.welch), averaged: 0 when the spectra agree, 1 when the power is all wrong.
- discriminative_score: |accuracy - 0.5| of an LSTM classifier trained after the fact to tell true from
  generated sequences (Yoon et al., TimeGAN, 2019; 200 Adam steps of batch 64), on a held-out fifth, half true and half generated: 0 = indistinguishable, 0.5 = always told apart.

Baselines (Splits only, no training): k nearest neighbours in z-scored parameter space (the mean of the k
training sequences with the closest parameters, k chosen on the validation split's MAE) and the
training split's mean sequence (unconditional). The headline is the free-running MAE against k-NN's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kiln.engine.batches import predict
from kiln.engine.task import Evaluation, Splits
from kiln.recipes.seqgen.config import SeqgenConfig
from kiln.recipes.seqgen.losses import autocorrelation
from kiln.recipes.seqgen.task import SeqgenTask

NEIGHBOURS = (1, 2, 3, 5, 8, 13, 21)
WELCH_SEGMENT = 64
DISCRIMINATOR_STEPS = 200
DISCRIMINATOR_BATCH = 64


def spectral_distance(pred: Tensor, true: Tensor) -> float:
    from scipy.signal import welch

    _, p_pred = welch(pred.double().numpy(), nperseg=WELCH_SEGMENT, axis=1)   # [N, F, C]
    _, p_true = welch(true.double().numpy(), nperseg=WELCH_SEGMENT, axis=1)
    return float((np.abs(p_pred - p_true).sum(1) / np.maximum(p_true.sum(1), 1e-12)).mean())


class Discriminator(nn.Module):
    """LSTM over the sequence; logit of "true" from its outputs averaged over time (the last hidden state alone
    forgets the start of a 151-step sequence). An LSTM, as TimeGAN's paper describes it (its code has a GRU):
    on the CPU torch trains an LSTM through one fused kernel, forward and backward, 2.6-3x faster than a GRU of
    this size, and both gave the same scores within the held-out set's step (docs/seqgen.md)."""

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.rnn = nn.LSTM(channels, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.rnn(x)[0].mean(1)).squeeze(-1)


def balanced_holdout(num_true: int, num_pred: int) -> tuple[Tensor, Tensor]:
    """(fit, held) positions in cat([true, pred]): a fifth of the smaller set held out from each (at least one), so
    the held-out half is true and half generated and a classifier that cannot tell them apart scores exactly 0.5
    (a random fifth of both was unbalanced: on 100 + 100 sequences a constant answer scored 0.725)."""
    per_class = max(1, min(num_true, num_pred) // 5)
    true_order, pred_order = torch.randperm(num_true), num_true + torch.randperm(num_pred)
    held = torch.cat([true_order[:per_class], pred_order[:per_class]])
    return torch.cat([true_order[per_class:], pred_order[per_class:]]), held


def discriminative_score(pred: Tensor, true: Tensor, seed: int = 0) -> float:
    """|held-out accuracy - 0.5| of an LSTM trained to tell `true` [N, T, C] from `pred` [N, T, C]."""
    with torch.random.fork_rng(), torch.enable_grad():  # evaluation runs under no_grad; the classifier trains
        torch.manual_seed(seed)
        x = torch.cat([true, pred]).float()
        y = torch.cat([torch.ones(len(true)), torch.zeros(len(pred))])
        fit, held = balanced_holdout(len(true), len(pred))
        model = Discriminator(x.shape[-1])
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(DISCRIMINATOR_STEPS):
            batch = fit[torch.randint(len(fit), (DISCRIMINATOR_BATCH,))]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = ((model(x[held]) > 0).float() == y[held]).float().mean().item()
    return abs(accuracy - 0.5)


def generation_metrics(pred: Tensor, true: Tensor, max_lag: int) -> dict[str, float]:
    pred, true = pred.float().cpu(), true.float().cpu()
    acf = (autocorrelation(pred, max_lag) - autocorrelation(true, max_lag)).abs().mean()
    return {"mae": round((pred - true).abs().mean().item(), 6), "acf_error": round(acf.item(), 6),
            "spectral_distance": round(spectral_distance(pred, true), 6),
            "discriminative_score": round(discriminative_score(pred, true), 6)}


def nearest_neighbour_mean(train_params: Tensor, train_y: Tensor, query: Tensor, k: int) -> Tensor:
    """Mean of the k training sequences whose (z-scored) parameters are closest to each query: [Q, T, C]."""
    nearest = torch.cdist(query, train_params).topk(k, largest=False).indices       # [Q, k]
    return train_y[nearest].mean(1)


def choose_k(train: dict[str, Tensor], val: dict[str, Tensor]) -> tuple[int, dict[int, float]]:
    """The k (of NEIGHBOURS) with the lowest validation MAE, and every k's validation MAE."""
    maes = {k: (nearest_neighbour_mean(train["params"], train["y"], val["params"], k) - val["y"]).abs().mean().item()
            for k in NEIGHBOURS if k <= len(train["y"])}
    return min(maes, key=maes.get), maes


def generate(task: SeqgenTask, params: Tensor, batch_size: int) -> Tensor:
    """Free-running sequences for z-scored parameters [N, 2] -> [N, 151, 5] (z-scored), on the CPU."""
    task.eval()
    return predict({"params": params}, lambda batch: task.model(batch["params"]), batch_size, task.device)


@torch.no_grad()
def evaluate(task: SeqgenTask, splits: Splits, cfg: SeqgenConfig, options: dict[str, Any]) -> Evaluation:
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


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Free-running test MAE (z-scored units) against the k-NN baseline's on the same sequences."""
    return {"metric": "free-running test MAE", "value": results["free_running"]["mae"], "baseline": "k-NN",
            "baseline_value": results["knn"]["mae"], "higher_is_better": False}
