"""Optimizers and learning-rate schedules from the `train:` section. Schedules step per optimizer step."""

from __future__ import annotations

import math

import torch

from kiln.config import TrainConfig


def build_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    sched = train.scheduler
    total = max(1, train.max_epochs * steps_per_epoch)
    floor = sched.min_lr / train.lr  # schedules below are multipliers of train.lr
    if sched.name == "cosine_warm_restarts":
        first_cycle = max(1, round(sched.restart_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=first_cycle, T_mult=sched.restart_mult, eta_min=sched.min_lr
        )
    warmup = sched.warmup * total if sched.warmup < 1 else sched.warmup

    def factor(step: int) -> float:
        if sched.name == "none":
            return 1.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
        if sched.name == "linear_decay":
            return 1.0 + (floor - 1.0) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
