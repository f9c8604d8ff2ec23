"""Nav task: loss on the set of optimal actions, per-cell accuracy, and greedy rollouts at validation.

Every reachable cell of every grid is supervised (its distance field gives the optimal set there),
not only the sampled start: that is ~40x more signal per grid and trains a policy that works from
anywhere. Rollout success is the figure that says whether the policy works at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kiln.engine.task import Task
from kiln.recipes.nav.metrics import optimal_hits, optimal_set_nll, rollout_metrics
from kiln.recipes.nav.model import build_model


class FinalLogits(torch.nn.Module):
    """The deployable policy: cell codes [B, G, G] (0 free, 1 wall, 2 goal) -> action logits [B, G*G, 5]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cells: Tensor) -> Tensor:
        return self.model(cells)[-1]


class FixedIterations(torch.nn.Module):
    """The recurrent policy for export: a fixed number of iterations (an exported graph has no data-dependent
    stopping), cell codes [B, H, W] -> action logits [B, H*W, 5]."""

    def __init__(self, model: torch.nn.Module, iterations: int):
        super().__init__()
        self.model, self.iterations = model, iterations

    def forward(self, cells: Tensor) -> Tensor:
        recall, h = self.model.read(cells)
        for _ in range(self.iterations):
            h = self.model.step(h, recall)
        return self.model.actions(h)


class NavTask(Task):
    console_metrics = ("loss", "acc")
    size_agnostic = False  # mixer and TRM have the grid size in their weights

    def __init__(self, model: torch.nn.Module, grid_size: int):
        super().__init__()
        self.model, self.grid_size = model, grid_size

    def loss_and_accuracy(self, outputs: list[Tensor], optimal: Tensor) -> dict[str, Tensor]:
        # TRM gives one output per supervision step: each is trained, the last one is the answer
        return {"loss": torch.stack([optimal_set_nll(logits, optimal) for logits in outputs]).mean(),
                "acc": optimal_hits(outputs[-1], optimal).sum() / optimal.any(-1).sum()}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.loss_and_accuracy(self.model(batch["cells"]), batch["optimal"])

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        outputs = self.model(batch["cells"])
        optimal, logits = batch["optimal"], outputs[-1]
        metrics = self.loss_and_accuracy(outputs, optimal)
        start_cell = batch["starts"][:, 0] * batch["cells"].shape[-1] + batch["starts"][:, 1]
        metrics["exact_acc"] = (logits[torch.arange(len(logits)), start_cell].argmax(-1) == batch["action"]).float().mean()
        rollout = rollout_metrics(logits, batch)
        metrics["rollout_success"] = rollout["success"].mean()
        metrics["rollout_optimality"] = rollout["optimality"].mean() if len(rollout["optimality"]) else torch.zeros(())
        return metrics

    def export_module(self, batch: dict[str, Tensor]):
        return FinalLogits(self.model), (batch["cells"],)

    def log_media(self, media, batch: dict[str, Tensor], step: int) -> None:
        from kiln.recipes.nav.report import draw_rollouts  # matplotlib is loaded only by a run that logs media

        media.figure("val/rollouts", draw_rollouts(self, batch, count=4), step)


class RecurrentNavTask(NavTask):
    """Trains the size-agnostic RecurrentConvPolicy on the BFS trace with a progressive loss.

    The BFS trace: after iteration t, the reached head should mark exactly the cells within t - 1 steps
    of the goal, and the action head should give an optimal move at each of them. Every iteration is
    supervised, so the state means the same thing at every step and the loop can run on past the
    training lengths. It goes on for half as long again after the wave has covered the grid, so that
    the answer stays right when inference runs a few iterations more than needed. The progressive
    loss (Bansal et al. 2022): each batch first runs a random number of iterations without gradients
    and learns only from there on, so the network is trained to go on from states it produced itself,
    not from a fixed starting count.
    """

    size_agnostic = True

    def export_module(self, batch: dict[str, Tensor]):
        # model.iterations if set, else one per cell of the training grid: enough for any path on it
        return FixedIterations(self.model, self.model.iterations or batch["cells"][0].numel()), (batch["cells"],)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        model, dist, optimal = self.model, batch["dist"], batch["optimal"]
        # the wave needs max distance + 1 iterations to reach every reachable cell; half as many again keep the
        # answer right when inference runs longer than needed (labels set only the amount of training compute)
        wave = int(dist.max()) + 1
        iterations = wave + 1 + wave // 2
        recall, h = model.read(batch["cells"])
        skipped = int(torch.randint(0, iterations, ()))
        with torch.no_grad():
            for _ in range(skipped):
                h = model.step(h, recall)
        hint_loss, action_loss = [], []
        for t in range(skipped + 1, iterations + 1):
            h = model.step(h, recall)
            reached = (dist >= 0) & (dist < t)
            hint_loss.append(F.binary_cross_entropy_with_logits(model.reached(h).float(), reached.float()))
            if reached.any():
                action_loss.append(optimal_set_nll(model.actions(h)[reached.flatten(1)], optimal[reached.flatten(1)]))
        loss = torch.stack(hint_loss).mean() + torch.stack(action_loss).mean()
        final = model.actions(h)  # all reachable cells are reached by the last iteration
        return {"loss": loss, "acc": optimal_hits(final, optimal).sum() / optimal.any(-1).sum()}


def build_task(cfg, info: dict) -> NavTask:
    task_class = RecurrentNavTask if cfg.model.arch == "recurrent" else NavTask
    return task_class(build_model(cfg.model, info["grid_size"]), info["grid_size"])
