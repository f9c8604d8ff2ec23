"""Tests for kiln.recipes.nav.task: the mixer's and the recurrent policy's training steps."""

import pytest
import torch

from kiln.recipes.nav.config import MixerModel, RecurrentModel
from kiln.recipes.nav.data import to_tensors
from kiln.recipes.nav.model import build_model
from kiln.recipes.nav.task import NavTask, RecurrentNavTask


@pytest.mark.parametrize("task_class, model, steps", [
    (NavTask, MixerModel(dim=32, depth=2, token_hidden=32, dropout=0.0), 60),
    (RecurrentNavTask, RecurrentModel(dim=16, channel_mult=2), 80),  # learns the BFS trace
], ids=["mixer", "recurrent"])
def test_task_loss_decreases_on_a_fixed_batch(make_split, task_class, model, steps):
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


def test_progressive_loss_trains_only_after_the_skipped_iterations(make_split, monkeypatch):
    split = to_tensors(make_split(n=8, size=6))
    task = RecurrentNavTask(build_model(RecurrentModel(dim=8, channel_mult=2), 6), 6)
    grads = []
    task.model.update.register_forward_hook(lambda module, args, out: grads.append(out.requires_grad))
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor(3))
    task.training_step(split)
    wave = int(split["dist"].max()) + 1
    iterations = wave + 1 + wave // 2
    assert grads == [False] * 3 + [True] * (iterations - 3)
