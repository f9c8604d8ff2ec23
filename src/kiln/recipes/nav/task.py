"""Nav task: loss on the set of optimal actions, per-cell accuracy, and greedy rollouts.

Every reachable cell of every grid is supervised (its distance field gives the optimal set there),
not only the sampled start: that is ~40x more signal per grid and trains a policy that works from
anywhere. Rollout success is the figure that says whether the policy works at all.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kiln.engine.task import Evaluation, Splits, Task
from kiln.errors import KilnError
from kiln.recipes.nav.data import ACTION_DELTAS, STAY, load_split
from kiln.recipes.nav.model import build_model


MAX_BATCH_CELLS = 1 << 21  # grid cells per inference batch: a batch of 512x512 maps holds 8 of them


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
    bounds = torch.tensor(walls.shape[-2:], device=starts.device)  # maps need not be square
    rows = torch.arange(len(starts), device=starts.device)
    deltas = torch.as_tensor(ACTION_DELTAS, device=starts.device)
    pos, moves = starts.clone(), torch.zeros(len(starts), dtype=torch.long, device=starts.device)
    done = (pos == goals).all(-1)
    trail = [pos.clone()] if record else []
    for _ in range(max_steps):
        action = actions[rows, pos[:, 0], pos[:, 1]]
        target = pos + deltas[action]
        inside = ((target >= 0) & (target < bounds)).all(-1)
        target = torch.minimum(target.clamp(min=0), bounds - 1)
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
    height, width = cells.shape[-2:]
    actions = logits.argmax(-1).view(-1, height, width)
    reached, moves, _ = greedy_rollout(actions, cells == 1, batch["starts"], batch["goals"], 4 * height * width)
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
        from kiln.recipes.nav.report import draw_rollouts

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
def predict_logits(task: NavTask, cells: Tensor, batch_size: int = 1024) -> tuple[Tensor, int | None]:
    """Final logits [N, H*W, 5] on the CPU, computed in batches on the task's device, and the most
    iterations a batch took (recurrent model; None for the fixed-depth ones)."""
    task.eval()
    batch_size = max(1, min(batch_size, MAX_BATCH_CELLS // cells[0].numel()))  # large maps go a few at a time
    logits, iterations = [], []
    for i in range(0, len(cells), batch_size):
        logits.append(task.model(cells[i:i + batch_size].to(task.device))[-1].float().cpu())
        iterations.append(getattr(task.model, "last_iterations", None))
    return torch.cat(logits), max(iterations) if None not in iterations else None


@torch.no_grad()
def split_metrics(task: NavTask, split: dict[str, Tensor], batch_size: int = 1024) -> dict[str, float]:
    """Pooled metrics over a whole split (not means of batch means)."""
    logits, iterations = predict_logits(task, split["cells"], batch_size)
    optimal = split["optimal"]
    n = len(logits)
    start_cell = split["starts"][:, 0] * split["cells"].shape[-1] + split["starts"][:, 1]
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
        **({"iterations": iterations} if iterations is not None else {}),
    }


def layout_size_metrics(task: NavTask, eval_dir: Path, batch_size: int) -> dict[str, dict]:
    """Rollout success and optimality on each held-out (layout, side) set that `eval_sizes` wrote, with the
    iterations used (the most any batch needed) and the time per map. A fixed-size model is measured only
    on the sets of its own side."""
    results = {}
    for path in sorted(Path(eval_dir).glob("*.npz"), key=lambda p: (p.stem.rsplit("_", 1)[0], int(p.stem.rsplit("_", 1)[1]))):
        layout, side = path.stem.rsplit("_", 1)
        if not task.size_agnostic and int(side) != task.grid_size:
            continue
        split = to_tensors(load_split(path.parent, path.stem))
        start = time.perf_counter()
        metrics = split_metrics(task, split, batch_size)
        seconds = time.perf_counter() - start
        results[path.stem] = {"layout": layout, "size": int(side), "grids": metrics["num_grids"],
                              **{k: metrics[k] for k in ("rollout_success", "rollout_optimality", "optimal_action_accuracy")},
                              "iterations": metrics.get("iterations"), "seconds_per_map": seconds / metrics["num_grids"]}
    return results


def evaluate(task: NavTask, splits: Splits, cfg, options: dict) -> Evaluation:
    """Test-split metrics, or with the `--map` flags a rollout on a user's MovingAI map."""
    if options.get("scen") and not options.get("map"):
        raise KilnError("--scen needs --map (the .map file its start/goal pairs refer to)")
    if options.get("map"):
        from kiln.recipes.nav.maps import evaluate_map

        return Evaluation(evaluate_map(task, options["map"], options.get("scen"), options.get("num_pairs") or 200,
                                       seed=cfg.train.seed, batch_size=cfg.train.eval_batch_size))
    results = {"split": "test", **split_metrics(task, splits.test, cfg.train.eval_batch_size)}
    eval_dir = Path(cfg.data.dir) / "eval"
    if eval_dir.is_dir():
        results["by_layout_size"] = layout_size_metrics(task, eval_dir, cfg.train.eval_batch_size)
    return Evaluation(results)
