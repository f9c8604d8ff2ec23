"""Greedy rollouts of a trained policy on a user's map in the MovingAI format (.map, optional .scen).

A size-agnostic (recurrent) model runs on a map of any size and shape; a mixer or TRM only on maps of
its training size.

Optimal lengths are recomputed 4-connected by BFS (a .scen's own lengths are octile, 8-connected);
pairs whose goal cannot be reached from the start are excluded and counted, never a crash.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kiln.errors import KilnError
from kiln.recipes.nav.data import (bfs_distance_field, optimal_action_sets, read_movingai_map, read_movingai_scen,
                                   single_action_labels)
from kiln.recipes.nav.task import split_metrics, to_tensors


def sample_pairs(grid: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    free = np.argwhere(grid == 0)
    if len(free) < 2:
        raise KilnError("the map has fewer than two free cells, so no start/goal pair can be sampled")
    picks = rng.integers(0, len(free), size=(count, 2))
    return free[picks[:, 0]], free[picks[:, 1]]


def evaluate_map(task, map_path: Path, scen_path: Path | None, num_pairs: int, seed: int = 0, batch_size: int = 1024) -> dict:
    try:
        grid = read_movingai_map(map_path)
        starts, goals = read_movingai_scen(scen_path) if scen_path else sample_pairs(grid, num_pairs, np.random.default_rng(seed))
    except (OSError, ValueError) as err:
        raise KilnError(f"cannot read MovingAI file: {err}") from None
    size = task.grid_size
    if not task.size_agnostic and grid.shape != (size, size):
        raise KilnError(f"map '{map_path}' is {grid.shape[0]}x{grid.shape[1]} but this {type(task.model).__name__} was trained on "
                        f"{size}x{size} grids and works only at that size; use a size-agnostic model (configs/nav/any_size.yaml) "
                        f"or train one at that size")
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
    results = {
        "name": f"map_{Path(map_path).stem}", "map": str(map_path), "scen": str(scen_path) if scen_path else None,
        "pairs": int(usable.sum()), "excluded_off_map_or_blocked": int((~on_free).sum()),
        "excluded_unreachable": int((start_dist < 0).sum()), "excluded_start_is_goal": int((start_dist == 0).sum()),
    }
    if not len(starts):
        return {**results, "rollout_success": None, "rollout_optimality": None}
    optimal = optimal_action_sets(grids, dist, goals)
    split = to_tensors({"grids": grids, "starts": starts, "goals": goals, "dist": dist, "optimal": optimal,
                        "action": single_action_labels(optimal, starts)})
    start = time.perf_counter()
    metrics = split_metrics(task, split, batch_size)
    seconds = time.perf_counter() - start
    return {
        **results,
        **{k: metrics[k] for k in ("optimal_action_accuracy", "rollout_success", "rollout_optimality")},
        **({"iterations": metrics["iterations"]} if "iterations" in metrics else {}),
        "seconds_per_pair": seconds / len(starts),
        "mean_optimal_length": float(start_dist[usable].mean()),
    }
