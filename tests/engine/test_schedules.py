import math

import pytest
import torch

from kiln.config import SchedulerConfig, TrainConfig
from kiln.engine.schedules import build_optimizer, build_scheduler


def lrs(train: TrainConfig, steps_per_epoch: int) -> list[float]:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch)
    seen = []
    for _ in range(train.max_epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_cosine_matches_formula():
    train = TrainConfig(lr=1.0, max_epochs=10, scheduler=SchedulerConfig(name="warmup_cosine", warmup=0.1, min_lr=0.1))
    seen = lrs(train, 10)  # 100 steps, 10 of warmup
    assert seen[0] == pytest.approx(1 / 11)
    assert seen[9] == pytest.approx(10 / 11)
    for step in (10, 40, 77, 99):
        progress = (step - 10) / 90
        assert seen[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_warmup_given_in_steps():
    train = TrainConfig(lr=1.0, max_epochs=1, scheduler=SchedulerConfig(name="warmup_cosine", warmup=4))
    assert lrs(train, 20)[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_linear_decay_goes_from_lr_to_min_lr():
    train = TrainConfig(lr=2.0, max_epochs=4, scheduler=SchedulerConfig(name="linear_decay", min_lr=0.0))
    seen = lrs(train, 25)
    assert seen[0] == pytest.approx(2.0)
    assert seen[50] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(seen, seen[1:]))


def test_cosine_warm_restarts_cycle_in_epochs():
    train = TrainConfig(lr=1.0, max_epochs=4, scheduler=SchedulerConfig(name="cosine_warm_restarts", restart_epochs=1, min_lr=0.0))
    seen = lrs(train, 8)
    assert seen[0] == seen[8] == seen[16] == pytest.approx(1.0)  # restarts every epoch
    assert seen[4] == pytest.approx(0.5)


def test_optimizers():
    sgd = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="sgd", momentum=0.8, lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    adam = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="adam", betas=(0.8, 0.9)))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.9)
