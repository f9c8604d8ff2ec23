"""A labelled split of random grids, built from the grid primitives (the tests' own labelling, not data.py's)."""

import numpy as np
import pytest

from kiln.recipes.nav.grid import bfs_distance_field, optimal_action_sets, single_action_labels
from kiln.recipes.nav.layouts import random_grids


@pytest.fixture
def make_split():
    """make_split(n, size, seed) -> a split dict of numpy arrays keyed like data.SPLIT_KEYS."""
    def make(n=40, size=7, seed=0):
        rng = np.random.default_rng(seed)
        grids, starts, goals = random_grids(n, size, 0.25, rng)
        dist = bfs_distance_field(grids, goals)
        optimal = optimal_action_sets(grids, dist, goals)
        return {"grids": grids, "starts": starts, "goals": goals, "dist": dist, "optimal": optimal,
                "action": single_action_labels(optimal, starts)}

    return make
