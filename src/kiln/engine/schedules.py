"""Optimizers (with per-module groups and frozen modules) and learning-rate schedules from `train:`.

Schedules step once per optimizer step and multiply each parameter group's own learning rate.
"""

from __future__ import annotations

import difflib
import math

import torch

from kiln.config import TrainConfig
from kiln.errors import KilnError


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_prefixes(module: torch.nn.Module, prefixes: list[str], key: str) -> None:
    """Every prefix must name a module or parameter of the model; a typo names the closest module."""
    names = [n for n, _ in module.named_modules() if n] + [n for n, _ in module.named_parameters()]
    for prefix in prefixes:
        if not any(under(name, prefix) for name in names):
            close = difflib.get_close_matches(prefix, names, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"top-level modules: {', '.join(n for n, _ in module.named_children())}"
            raise KilnError(f"{key}: the model has no module '{prefix}'; {hint}")


def build_optimizer(module: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Freeze train.freeze, then one parameter group per train.param_groups prefix (the longest matching
    prefix wins) plus the default group for the rest. Group names are kept as `group["name"]`."""
    check_prefixes(module, train.freeze, "train.freeze")
    check_prefixes(module, list(train.param_groups), "train.param_groups")
    prefixes = sorted(train.param_groups, key=len, reverse=True)
    grouped: dict[str, list[torch.nn.Parameter]] = {"default": [], **{p: [] for p in train.param_groups}}
    for name, param in module.named_parameters():
        if any(under(name, prefix) for prefix in train.freeze):
            param.requires_grad_(False)
            continue
        if param.requires_grad:
            grouped[next((p for p in prefixes if under(name, p)), "default")].append(param)
    groups = [{"params": grouped["default"], "name": "default"}]
    for prefix, settings in train.param_groups.items():
        if not grouped[prefix]:
            raise KilnError(f"train.param_groups: every parameter under '{prefix}' is frozen or claimed by a longer prefix")
        groups.append({"params": grouped[prefix], "name": prefix,
                       **{k: v for k, v in settings.model_dump().items() if v is not None}})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise KilnError("train.freeze leaves no trainable parameters; freeze fewer modules")
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


def total_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    steps = train.max_epochs * steps_per_epoch
    return max(1, min(steps, train.max_steps) if train.max_steps else steps)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    sched = train.scheduler
    total = total_steps(train, steps_per_epoch)
    floor = sched.min_lr / train.lr  # schedules below are multipliers of each group's lr
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
