import math

import pytest
import torch

from kiln.config import SchedulerConfig, TrainConfig
from kiln.engine.schedules import build_optimizer, build_scheduler
from kiln.errors import KilnError


def lrs(train: TrainConfig, steps_per_epoch: int) -> list[float]:
    optimizer = build_optimizer(torch.nn.Linear(1, 1), train)
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
    sgd = build_optimizer(torch.nn.Linear(1, 1), TrainConfig(optimizer="sgd", momentum=0.8, lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    adam = build_optimizer(torch.nn.Linear(1, 1), TrainConfig(optimizer="adam", betas=(0.8, 0.9)))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.9)


class WorldModelLike(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        self.dynamics = torch.nn.GRU(4, 4)
        self.decoder = torch.nn.Linear(4, 4)


def test_param_groups_carry_their_lrs_and_the_schedule_scales_each():
    model = WorldModelLike()
    train = TrainConfig(lr=1e-3, weight_decay=0.01, max_epochs=1, scheduler=SchedulerConfig(name="linear_decay"),
                        param_groups={"encoder": {"lr": 1e-5}, "encoder.1": {"lr": 3e-5, "weight_decay": 0.0}, "dynamics": {"lr": 2e-4}})
    optimizer = build_optimizer(model, train)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert {n: g["lr"] for n, g in groups.items()} == {"default": 1e-3, "encoder": 1e-5, "encoder.1": 3e-5, "dynamics": 2e-4}
    assert groups["encoder.1"]["weight_decay"] == 0.0 and groups["encoder"]["weight_decay"] == 0.01
    # the longest prefix claims a parameter; every parameter is in exactly one group
    assert {id(p) for p in groups["encoder.1"]["params"]} == {id(p) for p in model.encoder[1].parameters()}
    assert {id(p) for p in groups["encoder"]["params"]} == {id(p) for p in model.encoder[0].parameters()}
    assert {id(p) for p in groups["default"]["params"]} == {id(p) for p in model.decoder.parameters()}
    scheduler = build_scheduler(optimizer, train, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert groups["dynamics"]["lr"] / groups["default"]["lr"] == pytest.approx(0.2)  # one schedule, each group's own lr


def test_frozen_modules_get_no_updates_and_typos_name_the_closest_module():
    model = WorldModelLike()
    optimizer = build_optimizer(model, TrainConfig(freeze=["encoder", "dynamics"]))
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.decoder.parameters()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(KilnError, match="train.param_groups: the model has no module 'encodr'; did you mean 'encoder'?"):
        build_optimizer(WorldModelLike(), TrainConfig(param_groups={"encodr": {"lr": 1e-4}}))
    with pytest.raises(KilnError, match="train.freeze: the model has no module 'decoders'; did you mean 'decoder'?"):
        build_optimizer(WorldModelLike(), TrainConfig(freeze=["decoders"]))
    with pytest.raises(KilnError, match="leaves no trainable parameters"):
        build_optimizer(WorldModelLike(), TrainConfig(freeze=["encoder", "dynamics", "decoder"]))
