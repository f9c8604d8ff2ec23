"""Tests for kiln.recipes.nav.metrics: the optimal-set loss and greedy rollouts, against direct computations and networkx."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from kiln.recipes.nav.data import to_tensors
from kiln.recipes.nav.metrics import greedy_rollout, optimal_set_nll


def test_optimal_set_nll_matches_a_direct_computation():
    logits = torch.randn(3, 4, 5)
    optimal = torch.rand(3, 4, 5) > 0.5
    optimal[0, 0] = False  # a wall: not counted
    optimal[1, 2] = torch.tensor([False, False, False, False, True])
    expected = []
    for b in range(3):
        for t in range(4):
            if optimal[b, t].any():
                p = torch.softmax(logits[b, t], -1)
                expected.append(-math.log(p[optimal[b, t]].sum().item()))
    assert optimal_set_nll(logits, optimal).item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_optimal_set_nll_gradient_is_finite_with_walls():
    logits = torch.randn(2, 6, 5, requires_grad=True)
    optimal = torch.zeros(2, 6, 5, dtype=torch.bool)
    optimal[:, :3, 1] = True  # half the cells are walls
    optimal_set_nll(logits, optimal).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[:, 3:] == 0).all()


def test_rollout_path_length_matches_networkx(make_split):
    split = make_split(n=20, size=6, seed=1)
    tensors = to_tensors(split)
    actions = tensors["optimal"].float().argmax(-1).view(-1, 6, 6)
    reached, moves, trail = greedy_rollout(actions, tensors["cells"] == 1, tensors["starts"], tensors["goals"], 4 * 36, record=True)
    assert reached.all()
    for b in range(20):
        graph = nx.grid_2d_graph(6, 6)
        graph.remove_nodes_from([tuple(c) for c in np.argwhere(split["grids"][b] == 1)])
        length = nx.shortest_path_length(graph, tuple(split["starts"][b]), tuple(split["goals"][b]))
        assert moves[b].item() == length
        path = torch.stack(trail, 1)[b, : length + 1]
        assert all(split["grids"][b][r, c] == 0 for r, c in path.tolist())


def test_rollout_failures_walls_loops_and_stay():
    walls = torch.zeros(3, 4, 4, dtype=torch.bool)
    walls[0, 0, 1] = True
    actions = torch.full((3, 4, 4), 3)          # always "right"
    actions[1, 0, 1] = 2                        # grid 1: right then left, forever
    actions[2] = 4                              # grid 2: always "stay"
    starts = torch.tensor([[0, 0], [0, 0], [0, 0]])
    goals = torch.tensor([[0, 3], [0, 3], [3, 3]])
    reached, moves, _ = greedy_rollout(actions, walls, starts, goals, max_steps=64)
    assert reached.tolist() == [False, False, False]
    assert moves[0] == 0 and moves[2] == 0
    assert moves[1] == 64  # the loop runs to the step limit (4 x cells)
