"""Benchmark: kiln's vectorised nav data generator against per-sample networkx A* (the seed's approach).

Run:  python bench/nav_datagen.py
The last printed line is a JSON object with the headline numbers.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

try:
    from kiln.recipes.nav import data, grid, layouts
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from kiln.recipes.nav import data, grid, layouts

import networkx as nx
import numpy as np

GRID_SIZE = 8
DENSITY = 0.25
NUM_KILN = 20_000
NUM_ASTAR = 500


def kiln_samples_per_s(n, rng):
    """Grids, starts, goals, BFS distances, optimal sets and single labels for n samples."""
    start = time.perf_counter()
    grids, starts, goals = layouts.random_grids(n, GRID_SIZE, DENSITY, rng)
    dist = grid.bfs_distance_field(grids, goals)
    optimal = grid.optimal_action_sets(grids, dist, goals)
    grid.single_action_labels(optimal, starts)
    return n / (time.perf_counter() - start)


def astar_samples_per_s(n, rng):
    """One grid, one networkx A* path from start to goal, per sample (unsolvable draws retried)."""
    start = time.perf_counter()
    made = 0
    while made < n:
        grid = rng.random((GRID_SIZE, GRID_SIZE)) < DENSITY
        graph = nx.grid_2d_graph(GRID_SIZE, GRID_SIZE)
        graph.remove_nodes_from(map(tuple, np.argwhere(grid)))
        free = list(graph.nodes)
        if len(free) < 2:
            continue
        i, j = rng.choice(len(free), size=2, replace=False)
        try:
            nx.astar_path(graph, free[i], free[j])
        except nx.NetworkXNoPath:
            continue
        made += 1
    return n / (time.perf_counter() - start)


def main():
    rng = np.random.default_rng(0)
    # best of 3 for both, so a busy machine penalises neither side more than the other
    kiln_samples_per_s(1000, rng)  # warm-up
    kiln_rate = max(kiln_samples_per_s(NUM_KILN, rng) for _ in range(3))
    print(f"kiln generator:    {kiln_rate:12,.0f} samples/s  ({NUM_KILN} {GRID_SIZE}x{GRID_SIZE} grids, density {DENSITY})")
    astar_rate = max(astar_samples_per_s(NUM_ASTAR, rng) for _ in range(3))
    print(f"networkx A*:       {astar_rate:12,.0f} samples/s  ({NUM_ASTAR} grids, one path each)")
    ratio = kiln_rate / astar_rate
    print(f"ratio:             {ratio:12,.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = data.generate_dataset(Path(tmp) / "nav", num_train=50_000, num_val=0, num_test=2_000, augment=True)
        generate_s = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "nav").iterdir()) / 1e6
    print(
        f"generate_dataset:  {generate_s:12.2f} s  (50k train x8 augmented = {info['counts']['train']} rows, "
        f"2k test, {size_mb:.0f} MB on disk; multi-optimal fraction {info['multi_optimal_fraction']:.3f})"
    )

    print(
        json.dumps(
            {
                "kiln_samples_per_s": round(kiln_rate, 1),
                "networkx_astar_samples_per_s": round(astar_rate, 1),
                "ratio": round(ratio, 1),
                "generate_50k_augmented_s": round(generate_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
