"""Nav task: loss on the set of optimal actions, per-cell accuracy, and greedy rollouts.

Every reachable cell of every grid is supervised (its distance field gives the optimal set there),
not only the sampled start: that is ~40x more signal per grid and trains a policy that works from
anywhere. Rollout success is the figure that says whether the policy works at all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kiln.engine.task import Splits, Task
from kiln.errors import KilnError
from kiln.recipes.nav.data import ACTION_DELTAS, STAY
from kiln.recipes.nav.model import build_model


def optimal_set_nll(logits: Tensor, optimal: Tensor) -> Tensor:
    """-log P(optimal set) = -log sum_{a optimal} softmax(logits)_a, averaged over reachable cells."""
    reachable = optimal.any(-1)
    log_p = logits[reachable].float().log_softmax(-1)
    return -log_p.masked_fill(~optimal[reachable], float("-inf")).logsumexp(-1).mean()


def optimal_hits(logits: Tensor, optimal: Tensor) -> Tensor:
    """Per cell: is the argmax action in the optimal set? [B, T] bool (False off reachable cells)."""
    return optimal.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)


def greedy_rollout(actions: Tensor, walls: Tensor, starts: Tensor, goals: Tensor, max_steps: int,
                   record: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Follow the policy's argmax action from each start, all grids at once.

    actions [B, G, G] (greedy action per cell), walls [B, G, G] bool, starts/goals [B, 2].
    A move into a wall or off the grid leaves the agent in place. Returns (reached goal [B],
    moves made [B], positions per step if `record`). The policy is deterministic, so an agent that
    does not move is stuck for good and the walk ends once no agent moves.
    """
    size = walls.shape[-1]
    rows = torch.arange(len(starts), device=starts.device)
    deltas = torch.as_tensor(ACTION_DELTAS, device=starts.device)
    pos, moves = starts.clone(), torch.zeros(len(starts), dtype=torch.long, device=starts.device)
    done = (pos == goals).all(-1)
    trail = [pos.clone()] if record else []
    for _ in range(max_steps):
        action = actions[rows, pos[:, 0], pos[:, 1]]
        target = pos + deltas[action]
        inside = ((target >= 0) & (target < size)).all(-1)
        target = target.clamp(0, size - 1)
        moved = ~done & inside & ~walls[rows, target[:, 0], target[:, 1]] & (action != STAY)
        if not moved.any():
            break
        pos = torch.where(moved[:, None], target, pos)
        moves += moved
        done |= (pos == goals).all(-1)
        if record:
            trail.append(pos.clone())
    return done, moves, trail


def rollout_metrics(logits: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """rollout_success (goal reached within 4 x cells moves) and rollout_optimality (BFS length / moves)."""
    cells = batch["cells"]
    size = cells.shape[-1]
    actions = logits.argmax(-1).view(-1, size, size)
    reached, moves, _ = greedy_rollout(actions, cells == 1, batch["starts"], batch["goals"], 4 * size * size)
    shortest = batch["dist"][torch.arange(len(cells)), batch["starts"][:, 0], batch["starts"][:, 1]].float()
    optimality = (shortest / moves.clamp(min=1))[reached]
    return {"success": reached.float(), "optimality": optimality}


class FinalLogits(torch.nn.Module):
    """The deployable policy: cell codes [B, G, G] (0 free, 1 wall, 2 goal) -> action logits [B, G*G, 5]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cells: Tensor) -> Tensor:
        return self.model(cells)[-1]


class NavTask(Task):
    console_metrics = ("loss", "acc")

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
        start_cell = batch["starts"][:, 0] * self.grid_size + batch["starts"][:, 1]
        metrics["exact_acc"] = (logits[torch.arange(len(logits)), start_cell].argmax(-1) == batch["action"]).float().mean()
        rollout = rollout_metrics(logits, batch)
        metrics["rollout_success"] = rollout["success"].mean()
        metrics["rollout_optimality"] = rollout["optimality"].mean() if len(rollout["optimality"]) else torch.zeros(())
        return metrics


    def export_module(self, batch: dict[str, Tensor]):
        return FinalLogits(self.model), (batch["cells"],)

    def log_media(self, media, batch: dict[str, Tensor], step: int) -> None:
        from kiln.recipes.nav.report import draw_rollouts

        media.figure("val/rollouts", draw_rollouts(self, batch, count=4), step)


def build_task(cfg, info: dict) -> NavTask:
    return NavTask(build_model(cfg.model, info["grid_size"]), info["grid_size"])


def to_tensors(split: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Arrays from data.load_split -> the tensors a batch carries."""
    cells = split["grids"].astype(np.uint8)  # 1 = wall
    n = len(cells)
    cells[np.arange(n), split["goals"][:, 0], split["goals"][:, 1]] = 2
    return {
        "cells": torch.from_numpy(cells),
        "optimal": torch.from_numpy(split["optimal"].reshape(n, -1, 5).astype(bool)),
        "starts": torch.from_numpy(split["starts"].astype(np.int64)),
        "goals": torch.from_numpy(split["goals"].astype(np.int64)),
        "dist": torch.from_numpy(split["dist"].astype(np.int64)),
        "action": torch.from_numpy(split["action"].astype(np.int64)),
    }


@torch.no_grad()
def predict_logits(task: NavTask, cells: Tensor, batch_size: int = 1024) -> Tensor:
    """Final logits [N, G*G, 5] on the CPU, computed in batches on the task's device."""
    task.eval()
    return torch.cat([task.model(cells[i:i + batch_size].to(task.device))[-1].float().cpu() for i in range(0, len(cells), batch_size)])


@torch.no_grad()
def split_metrics(task: NavTask, split: dict[str, Tensor], batch_size: int = 1024) -> dict[str, float]:
    """Pooled metrics over a whole split (not means of batch means)."""
    logits = predict_logits(task, split["cells"], batch_size)
    optimal = split["optimal"]
    n = len(logits)
    start_cell = split["starts"][:, 0] * task.grid_size + split["starts"][:, 1]
    start_logits = logits[torch.arange(n), start_cell]
    rollout = rollout_metrics(logits, split)
    return {
        "loss": optimal_set_nll(logits, optimal).item(),
        "optimal_action_accuracy": (optimal_hits(logits, optimal).sum() / optimal.any(-1).sum()).item(),
        "start_optimal_accuracy": optimal[torch.arange(n), start_cell].gather(-1, start_logits.argmax(-1, keepdim=True)).float().mean().item(),
        "exact_accuracy": (start_logits.argmax(-1) == split["action"]).float().mean().item(),
        "rollout_success": rollout["success"].mean().item(),
        "rollout_optimality": rollout["optimality"].mean().item() if len(rollout["optimality"]) else 0.0,
        "num_grids": n,
        "num_reachable_cells": int(optimal.any(-1).sum()),
    }


def evaluate(task: NavTask, splits: Splits, cfg, options: dict) -> dict:
    """Test-split metrics, or with the `--map` flags a rollout on a user's MovingAI map."""
    if options.get("scen") and not options.get("map"):
        raise KilnError("--scen needs --map (the .map file its start/goal pairs refer to)")
    if options.get("map"):
        from kiln.recipes.nav.maps import evaluate_map

        return evaluate_map(task, options["map"], options.get("scen"), options.get("num_pairs") or 200, seed=cfg.train.seed,
                            batch_size=cfg.train.eval_batch_size)
    return {"split": "test", **split_metrics(task, splits.test, cfg.train.eval_batch_size)}
