"""Tests for kiln.recipes.nav.model: parameter counts, output shapes, TRM's gradients, the recurrent policy's iterations."""

import networkx as nx
import numpy as np
import pytest
import torch

from kiln.recipes.nav.config import MixerModel, RecurrentModel
from kiln.recipes.nav.data import to_tensors
from kiln.recipes.nav.model import GridMixer, RecurrentConvPolicy, TinyRecursiveMixer, build_model


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
    model = build_model(MixerModel(dim=16, depth=1, token_hidden=8), grid_size=5)
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


def test_recurrent_policy_runs_on_any_size():
    """No size in its weights: one model on 8x8, 40x40 and a non-square 8x20 map."""
    torch.manual_seed(0)
    model = build_model(RecurrentModel(dim=8, channel_mult=2, iterations=7), grid_size=16)
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


def test_each_map_runs_its_goals_bfs_eccentricity_plus_two_iterations(make_split):
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
