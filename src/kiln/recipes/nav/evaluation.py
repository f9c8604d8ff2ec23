"""Nav evaluation: pooled metrics over a split, the held-out sets per layout and size, a user's MovingAI map, and
the headline.

On a user's map (.map, optional .scen) a size-agnostic (recurrent) model runs at any size and shape; a mixer or
TRM only at its training size. Optimal lengths are recomputed 4-connected by BFS (a .scen's own lengths are
octile, 8-connected); pairs whose goal cannot be reached from the start are excluded and counted, never a crash.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kiln.engine.batches import predict
from kiln.engine.progress import track
from kiln.engine.task import Evaluation, Splits, Task
from kiln.errors import KilnError
from kiln.recipes.nav.data import load_split, to_tensors
from kiln.recipes.nav.grid import bfs_distance_field, optimal_action_sets, single_action_labels
from kiln.recipes.nav.metrics import optimal_hits, optimal_set_nll, rollout_metrics
from kiln.recipes.nav.movingai import MAX_PAIRS, read_movingai_map, read_movingai_scen

MAX_BATCH_CELLS = 1 << 21  # grid cells per inference batch: a batch of 512x512 maps holds 8 of them


def predict_logits(task: Task, cells: Tensor, batch_size: int = 1024, progress: str | None = None) -> tuple[Tensor, int | None]:
    """Final logits [N, H*W, 5] on the CPU, computed in batches on the task's device, and the most
    iterations a batch took (recurrent model; None for the fixed-depth ones); `progress`: see batches.predict."""
    task.eval()
    batch_size = max(1, min(batch_size, MAX_BATCH_CELLS // cells[0].numel()))  # large maps go a few at a time
    iterations = []

    def final_logits(batch: dict[str, Tensor]) -> Tensor:
        logits = task.model(batch["cells"])[-1]
        iterations.append(getattr(task.model, "last_iterations", None))
        return logits

    logits = predict({"cells": cells}, final_logits, batch_size, task.device, progress)
    return logits, max(iterations) if None not in iterations else None


@torch.no_grad()
def split_metrics(task: Task, split: dict[str, Tensor], batch_size: int = 1024, progress: str | None = None) -> dict[str, float]:
    """Pooled metrics over a whole split (not means of batch means)."""
    logits, iterations = predict_logits(task, split["cells"], batch_size, progress)
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


def layout_size_metrics(task: Task, eval_dir: Path, batch_size: int) -> dict[str, dict]:
    """Rollout success and optimality on each held-out (layout, side) set that `eval_sizes` wrote, with the
    iterations used (the most any batch needed) and the time per map. A fixed-size model is measured only
    on the sets of its own side."""
    results = {}
    paths = sorted(Path(eval_dir).glob("*.npz"), key=lambda p: (p.stem.rsplit("_", 1)[0], int(p.stem.rsplit("_", 1)[1])))
    for path in track(paths, "Held-out layout and size sets"):
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


def shortest_path_rollout_success(split: dict[str, Tensor]) -> float:
    """The optimum a policy is measured against: greedy rollouts that take an optimal move at every cell."""
    return rollout_metrics(split["optimal"].float(), split)["success"].mean().item()


def sample_pairs(grid: np.ndarray, count: int, rng: np.random.Generator, source: Path) -> tuple[np.ndarray, np.ndarray]:
    free = np.argwhere(grid == 0)
    if len(free) < 2:
        raise KilnError(f"'{source}' has fewer than two free cells, so no start/goal pair can be sampled; pass a map "
                        "with open ground")
    picks = rng.integers(0, len(free), size=(count, 2))
    return free[picks[:, 0]], free[picks[:, 1]]


def read_map_pairs(map_path: Path, scen_path: Path | None, num_pairs: int, seed: int) -> tuple[np.ndarray, ...]:
    """A MovingAI map as a uint8 grid (1 = wall) with the .scen's start/goal pairs, or `num_pairs` sampled ones."""
    try:
        grid = read_movingai_map(map_path)
        starts, goals = read_movingai_scen(scen_path) if scen_path else sample_pairs(grid, num_pairs, np.random.default_rng(seed), map_path)
    except (OSError, ValueError) as err:
        raise KilnError(f"cannot read MovingAI file: {err}") from None
    return grid, starts, goals


def label_map_pairs(grid: np.ndarray, starts: np.ndarray, goals: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The pairs a policy can be measured on (both cells on the map and free, the goal reachable and not the start),
    labelled like a dataset split, and how many pairs were kept and excluded for each reason."""
    bounds = np.array(grid.shape)
    inside = ((starts >= 0) & (starts < bounds) & (goals >= 0) & (goals < bounds)).all(1)
    on_free = np.zeros(len(starts), bool)
    on_free[inside] = (grid[starts[inside, 0], starts[inside, 1]] == 0) & (grid[goals[inside, 0], goals[inside, 1]] == 0)
    starts, goals = starts[on_free], goals[on_free]
    grids = np.repeat(grid[None], len(starts), axis=0)
    dist = bfs_distance_field(grids, goals)
    start_dist = dist[np.arange(len(starts)), starts[:, 0], starts[:, 1]]
    usable = start_dist > 0  # -1: goal unreachable from start; 0: start is the goal
    grids, starts, goals, dist = grids[usable], starts[usable], goals[usable], dist[usable]
    counts = {"pairs": int(usable.sum()), "excluded_off_map_or_blocked": int((~on_free).sum()),
              "excluded_unreachable": int((start_dist < 0).sum()), "excluded_start_is_goal": int((start_dist == 0).sum())}
    optimal = optimal_action_sets(grids, dist, goals)
    pairs = {"grids": grids, "starts": starts, "goals": goals, "dist": dist, "optimal": optimal,
             "action": single_action_labels(optimal, starts)}
    return pairs, counts


def no_pairs_message(map_path, scen_path, shape, starts, goals, counts) -> str:
    """Why not one start/goal pair could be measured (a .scen of another map, or every pair excluded)."""
    source = f"start/goal pairs in '{scen_path}'" if scen_path else "sampled start/goal pairs"
    inside = ((starts >= 0) & (starts < shape) & (goals >= 0) & (goals < shape)).all(1)
    if len(starts) and not inside.any():
        return (f"none of the {len(starts)} {source} lies on '{map_path}' ({shape[0]}x{shape[1]}); "
                f"give the .scen made for this map")
    reasons = [f"{counts['excluded_off_map_or_blocked']} off the map or on a wall",
               f"{counts['excluded_unreachable']} unreachable", f"{counts['excluded_start_is_goal']} with the start on the goal"]
    what = f"start/goal pair in '{scen_path}'" if scen_path else "sampled start/goal pair"
    return f"no {what} can be measured on '{map_path}': " + ", ".join(r for r in reasons if not r.startswith("0 "))


def check_map_options(options: dict) -> int:
    """The pairs --num-pairs asks for (default 200): a count in 1..MAX_PAIRS, and only without --scen."""
    num_pairs = options.get("num_pairs")
    if options.get("scen") and not options.get("map"):
        raise KilnError("--scen needs --map (the .map file its start/goal pairs refer to)")
    if num_pairs is None:
        return 200
    if not options.get("map"):
        raise KilnError("--num-pairs needs --map (the .map file to sample start/goal pairs on)")
    if options.get("scen"):
        raise KilnError("--num-pairs samples pairs when there is no --scen; give one of the two")
    if not 1 <= num_pairs <= MAX_PAIRS:
        raise KilnError(f"--num-pairs must be between 1 and {MAX_PAIRS}, got {num_pairs}")
    return num_pairs


def evaluate_map(task: Task, map_path: Path, scen_path: Path | None, num_pairs: int, seed: int = 0, batch_size: int = 1024) -> dict:
    """Rollouts of the task's policy on a user's map, from the .scen's start/goal pairs or sampled ones."""
    grid, starts, goals = read_map_pairs(map_path, scen_path, num_pairs, seed)
    size = task.grid_size
    if not task.size_agnostic and grid.shape != (size, size):
        raise KilnError(f"map '{map_path}' is {grid.shape[0]}x{grid.shape[1]} but this {type(task.model).__name__} was trained on "
                        f"{size}x{size} grids and works only at that size; use a size-agnostic model (configs/nav/any_size.yaml) "
                        f"or train one at that size")
    pairs, counts = label_map_pairs(grid, starts, goals)
    if not counts["pairs"]:
        raise KilnError(no_pairs_message(map_path, scen_path, grid.shape, starts, goals, counts))
    results = {"name": f"map_{Path(map_path).stem}", "map": str(map_path), "scen": str(scen_path) if scen_path else None, **counts}
    split = to_tensors(pairs)
    start = time.perf_counter()
    metrics = split_metrics(task, split, batch_size, progress=f"Rollouts on {Path(map_path).name}")
    seconds = time.perf_counter() - start
    starts = pairs["starts"]
    return {
        **results,
        **{k: metrics[k] for k in ("optimal_action_accuracy", "rollout_success", "rollout_optimality")},
        **({"iterations": metrics["iterations"]} if "iterations" in metrics else {}),
        "seconds_per_pair": seconds / len(starts),
        "mean_optimal_length": float(pairs["dist"][np.arange(len(starts)), starts[:, 0], starts[:, 1]].mean()),
    }


def evaluate(task: Task, splits: Splits, cfg, options: dict) -> Evaluation:
    """Test-split metrics, or with the `--map` flags a rollout on a user's MovingAI map."""
    num_pairs = check_map_options(options)
    if options.get("map"):
        return Evaluation(evaluate_map(task, options["map"], options.get("scen"), num_pairs,
                                       seed=cfg.train.seed, batch_size=cfg.train.eval_batch_size))
    results = {"split": "test", **split_metrics(task, splits.test, cfg.train.eval_batch_size),
               "shortest_path_rollout_success": shortest_path_rollout_success(splits.test)}
    eval_dir = Path(cfg.data.dir) / "eval"
    if eval_dir.is_dir():
        results["by_layout_size"] = layout_size_metrics(task, eval_dir, cfg.train.eval_batch_size)
    return Evaluation(results)


def data_mismatch(cfg, trained_info: dict, info: dict) -> str | None:
    """`kiln evaluate RUN --data DIR`: a mixer or TRM has one position embedding per cell of its training grids, so
    it runs on grids of that side only; the recurrent model runs at any size (None: nothing keeps it)."""
    trained, other = trained_info.get("grid_size"), info.get("grid_size")
    if cfg.model.arch == "recurrent" or trained is None or other is None or trained == other:
        return None
    return (f"model.arch {cfg.model.arch} has a position embedding per cell of its {trained}x{trained} training grids and "
            f"these grids are {other}x{other}; train on them, or use model.arch: recurrent, which runs at any size")


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Greedy rollout success on the test grids against the shortest-path optimum on the same grids."""
    return {"metric": "rollout success", "value": results["rollout_success"], "baseline": "shortest path",
            "baseline_value": results["shortest_path_rollout_success"], "higher_is_better": True}
