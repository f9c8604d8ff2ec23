import math

import networkx as nx
import numpy as np
import pytest
import torch

from kiln.recipes.nav import data
from kiln.recipes.nav.config import NavModel
from kiln.recipes.nav.model import GridMixer, RecurrentConvPolicy, TinyRecursiveMixer, build_model
from kiln.recipes.nav.task import (NavTask, RecurrentNavTask, greedy_rollout, optimal_set_nll, split_metrics,
                                   to_tensors)


def make_split(n=40, size=7, seed=0):
    rng = np.random.default_rng(seed)
    grids, starts, goals = data.random_grids(n, size, 0.25, rng)
    dist = data.bfs_distance_field(grids, goals)
    optimal = data.optimal_action_sets(grids, dist, goals)
    return {"grids": grids, "starts": starts, "goals": goals, "dist": dist, "optimal": optimal,
            "action": data.single_action_labels(optimal, starts)}


class Oracle(torch.nn.Module):
    """Logits that put all mass on one optimal action per cell (or on a fixed action)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, cells):
        return [self.logits[: len(cells)]]


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


def test_a_perfect_policy_scores_perfectly():
    split = to_tensors(make_split())
    first_optimal = split["optimal"].float().argmax(-1)  # an optimal action at every reachable cell
    logits = torch.nn.functional.one_hot(first_optimal, 5).float() * 10
    task = NavTask(Oracle(logits), grid_size=7)
    metrics = split_metrics(task, split)
    assert metrics["optimal_action_accuracy"] == 1.0
    assert metrics["start_optimal_accuracy"] == 1.0
    assert metrics["exact_accuracy"] == 1.0  # first optimal action is the seed's tie-broken label
    assert metrics["rollout_success"] == 1.0
    assert metrics["rollout_optimality"] == pytest.approx(1.0)


def test_rollout_path_length_matches_networkx():
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


def mixer_parameters(grid, dim, depth, token_hidden, channel_mult):
    tokens = grid * grid
    block = 2 * 2 * dim + (tokens * token_hidden + token_hidden + token_hidden * tokens + tokens) \
        + (dim * channel_mult * dim + channel_mult * dim + channel_mult * dim * dim + dim)
    return 3 * dim + tokens * dim + depth * block + 2 * dim + dim * 5 + 5


@pytest.mark.parametrize("dim, depth", [(32, 2), (64, 2), (128, 3), (256, 4)])
def test_parameter_counts(dim, depth):
    model = GridMixer(grid_size=8, dim=dim, depth=depth, dropout=0.1, token_hidden=128, channel_mult=4)
    assert sum(p.numel() for p in model.parameters()) == mixer_parameters(8, dim, depth, 128, 4)
    # Recursion ties weights: more compute, no more parameters.
    tied = GridMixer(grid_size=8, dim=dim, depth=depth, dropout=0.1, token_hidden=128, channel_mult=4, recursions=3)
    assert sum(p.numel() for p in tied.parameters()) == sum(p.numel() for p in model.parameters())


def test_mixer_outputs_every_cell():
    model = build_model(NavModel(dim=16, depth=1, token_hidden=8), grid_size=5)
    out = model(torch.randint(0, 3, (4, 5, 5)))
    assert len(out) == 1 and out[0].shape == (4, 25, 5)


def test_trm_deep_supervision_trains_only_the_last_cycle():
    model = TinyRecursiveMixer(grid_size=5, dim=16, depth=1, dropout=0.0, token_hidden=8, channel_mult=2,
                               recursions=2, cycles=3, supervision_steps=2)
    calls = []
    model.net.register_forward_hook(lambda module, args, out: calls.append(out.requires_grad))
    outputs = model(torch.randint(0, 3, (2, 5, 5)))
    assert len(outputs) == 2 and outputs[-1].shape == (2, 25, 5)
    per_cycle = 2 + 1  # n latent updates + one answer update
    expected = ([False] * per_cycle * 2 + [True] * per_cycle) * 2  # T-1 cycles without gradient, then one with
    assert calls == expected


@pytest.mark.parametrize("task_class, model, steps", [
    (NavTask, NavModel(dim=32, depth=2, token_hidden=32, dropout=0.0), 60),
    (RecurrentNavTask, NavModel(arch="recurrent", dim=16, channel_mult=2), 80),  # learns the BFS trace
], ids=["mixer", "recurrent"])
def test_task_loss_decreases_on_a_fixed_batch(task_class, model, steps):
    split = to_tensors(make_split(n=32, size=6))
    torch.manual_seed(0)
    task = task_class(build_model(model, 6), 6)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    first = task.training_step(split)["loss"].item()
    for _ in range(steps):
        loss = task.training_step(split)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_recurrent_policy_runs_on_any_size():
    """No size in its weights: one model on 8x8, 40x40 and a non-square 8x20 map."""
    torch.manual_seed(0)
    model = build_model(NavModel(arch="recurrent", dim=8, channel_mult=2, iterations=7), grid_size=16)
    for shape in [(8, 8), (40, 40), (8, 20)]:
        out = model(torch.randint(0, 3, (3, *shape)))
        assert len(out) == 1 and out[0].shape == (3, shape[0] * shape[1], 5)
        assert model.last_iterations == 7


class CountingModel(RecurrentConvPolicy):
    """A recurrent policy whose state counts the iterations it has run."""

    def __init__(self):
        super().__init__(dim=1, hidden=1)

    def step(self, h, recall):
        return h + 1


def test_each_map_runs_its_goals_bfs_eccentricity_plus_two_iterations():
    split = make_split(n=5, size=9, seed=3)
    cells = to_tensors(split)["cells"]
    expected = []
    for grid, goal in zip(split["grids"], split["goals"]):  # networkx: the goal's eccentricity in its component
        graph = nx.grid_2d_graph(9, 9)
        graph.remove_nodes_from(map(tuple, np.argwhere(grid == 1)))
        expected.append(max(nx.single_source_shortest_path_length(graph, tuple(goal)).values()) + 2)
    model = CountingModel()
    assert model.iteration_counts(cells).tolist() == expected
    model.actions = lambda h: h  # read the final state itself
    counted = model(cells)[0].flatten(1).amax(1).tolist()
    assert counted == expected and model.last_iterations == max(expected)  # each map stopped at its own count
    model.iterations = 4
    assert model(cells)[0].flatten(1).amax(1).tolist() == [4] * 5


def test_progressive_loss_trains_only_after_the_skipped_iterations(monkeypatch):
    split = to_tensors(make_split(n=8, size=6))
    task = RecurrentNavTask(build_model(NavModel(arch="recurrent", dim=8, channel_mult=2), 6), 6)
    grads = []
    task.model.update.register_forward_hook(lambda module, args, out: grads.append(out.requires_grad))
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor(3))
    task.training_step(split)
    wave = int(split["dist"].max()) + 1
    iterations = wave + 1 + wave // 2
    assert grads == [False] * 3 + [True] * (iterations - 3)
