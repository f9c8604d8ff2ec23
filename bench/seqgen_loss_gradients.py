"""Why the original guide's combined loss (alpha 0.5) learns the values late: the sizes of its two terms' gradients.

For freshly initialised StreamlinedSequenceGenerators (the guide's 256 x 2, five seeds) and a batch of 64 simulated
sequences (the default synthetic string: PCA to 5 components and z-scored, both fitted on this batch), one scheduled-sampling pass at the budget
configs' phase-1 settings (teacher forcing 0.7, noise 0.05), then the gradient norm over all weights of the MAE term
and of the autocorrelation term (max_lag 10), each unweighted. An untrained generator's outputs barely vary over a
sequence, and the ACF divides by that variance, so its gradient is large while the values are still wrong. Last
line: JSON with `ratio` = the median of |grad ACF| / |grad MAE|; CombinedMAEAutocorrLoss(alpha) weighs the two by
(1 - alpha) and alpha, so the ACF term leads the update while ratio > alpha / (1 - alpha).

    python bench/seqgen_loss_gradients.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from kiln.recipes.seqgen.losses import CombinedMAEAutocorrLoss  # noqa: E402
from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator  # noqa: E402
from kiln.recipes.seqgen.sim import draw_parameters, fit_pca, project, string_profiles  # noqa: E402

BATCH, TEACHER_FORCING, NOISE, MAX_LAG, SEEDS = 64, 0.7, 0.05, 10, 5


def simulated_batch() -> tuple[torch.Tensor, torch.Tensor]:
    params = draw_parameters(BATCH, seed=0)
    profiles = string_profiles(params, points=64)
    y = project(profiles, fit_pca(profiles, 5))
    y = (y - y.mean((0, 1))) / y.std((0, 1))
    params = (params - params.mean(0)) / params.std(0)
    return torch.tensor(params, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def gradient_norm(loss: torch.Tensor, weights: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.square().sum() for g in grads if g is not None)))


def main() -> None:
    torch.set_num_threads(1)
    params, y = simulated_batch()
    loss = CombinedMAEAutocorrLoss(max_lag=MAX_LAG)
    ratios = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        model = StreamlinedSequenceGenerator()
        _, mae, acf = loss(model.rollout(params, y, TEACHER_FORCING, NOISE), y)
        weights = list(model.parameters())
        g_mae, g_acf = gradient_norm(mae, weights), gradient_norm(acf, weights)
        ratios.append(g_acf / g_mae)
        print(f"seed {seed}: MAE {mae.item():.3f} (|grad| {g_mae:.4f}), ACF {acf.item():.3f} (|grad| {g_acf:.4f}), "
              f"ratio {ratios[-1]:.1f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"median |grad ACF| / |grad MAE| at initialisation: {ratio:.1f}; the ACF term leads the update below "
          f"alpha = {ratio / (1 + ratio):.3f}")
    print(json.dumps({"ratio": round(ratio, 2), "ratios": [round(r, 2) for r in ratios],
                      "alpha_where_equal": round(ratio / (1 + ratio), 3), "batch": BATCH}))


if __name__ == "__main__":
    main()
