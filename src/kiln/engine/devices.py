"""Devices, precision and processes: what Fabric is asked for, and why.

`train.precision: auto` must never be slower than fp32 on the machine at hand. bf16 autocast on a CPU
without native bf16 units (AVX2-only laptops and servers) runs ~9x slower than fp32, so `auto` picks
bf16 only where the hardware has it.
"""

from __future__ import annotations

import os

import torch

from kiln.config import TrainConfig
from kiln.errors import KilnError

PRECISION = {"32": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}
# How rank 0 hands its timed `auto` choice to the processes a Fabric launch starts ("precision|why").
AUTO_PRECISION_VARIABLE = "KILN_AUTO_PRECISION"
TIMED_STEPS, WARMUP_STEPS, TIME_BUDGET_S = 5, 2, 3.0
# auto takes bf16 over fp32 only when its timed step is this much faster: nearer than that, a loaded CPU's noise
# flipped the choice between runs of one config (world: 312 vs 338 ms), and fp32 is the exact one
BF16_MIN_GAIN = 0.10
# Environment variables a launcher (Fabric's own, torchrun, SLURM-style) sets on every process it starts.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


def cpu_native_bf16() -> str | None:
    """The CPU feature that runs bf16 matrix work natively (AVX512-BF16 or AMX), or None.

    ATen's dispatch level is checked too, so ATEN_CPU_CAPABILITY=avx2 (which makes torch use AVX2
    kernels on any CPU) counts as no native bf16."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def accelerator_for(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise KilnError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or train.device=cpu")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def resolve_precision(requested: str, accelerator: str) -> tuple[str, str]:
    """(precision, why): `auto` becomes what is fastest and safe here; an explicit value wins."""
    if requested != "auto":
        return requested, "set in the config"
    if accelerator == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"the GPU ({name}) supports bf16"
        return "16-mixed", f"the GPU ({name}) has no bf16, so fp16 with loss scaling"
    native = cpu_native_bf16()
    if native:
        return "bf16-mixed", f"this CPU has native bf16 ({native})"
    return "32", ("this CPU has no native bf16 (no AVX512-BF16 or AMX), where bf16 autocast runs several times "
                  "slower than fp32")


def time_precisions(build_task, train_split, train: TrainConfig, candidates: list[str], accelerator: str) -> dict[str, float] | None:
    """Milliseconds per training step (forward, backward, optimizer step) of a fresh task in each candidate precision,
    on the first training batch: WARMUP_STEPS untimed, then up to TIMED_STEPS timed or TIME_BUDGET_S per candidate.
    None for a task without trainable parameters. The caller keeps the random state (torch.random.fork_rng)."""
    import time

    from kiln.engine.batches import make_batches
    from kiln.engine.schedules import build_optimizer

    device = torch.device("cuda" if accelerator == "cuda" else "cpu")
    batch = next(iter(make_batches(train_split, train.batch_size, shuffle=False).epoch()))
    batch = {k: v.to(device) for k, v in batch.items()}
    timings = {}
    for precision in dict.fromkeys(candidates):
        task = build_task().to(device)
        if not any(p.requires_grad for p in task.parameters()):
            return None
        optimizer = build_optimizer(task, train)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        times = []
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = task(batch, "train")["loss"]
            loss.float().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= WARMUP_STEPS:
                times.append(time.perf_counter() - started)
            if sum(times) > TIME_BUDGET_S:
                break
        timings[precision] = 1000 * sorted(times)[len(times) // 2]  # the median step
    return timings


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_WORLD_SIZE" in os.environ


def is_worker_process() -> bool:
    """True in every process a distributed launch started except the first (global rank 0)."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in RANK_VARIABLES)


def process_layout(train: TrainConfig) -> dict:
    """Fabric's strategy/devices/num_nodes: from torchrun's environment when it started us, else the config."""
    if launched_by_torchrun():
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        return {"strategy": "ddp", "devices": local, "num_nodes": world // local}
    if train.strategy == "ddp" or train.devices > 1:
        return {"strategy": "ddp", "devices": train.devices, "num_nodes": 1}
    return {"strategy": "auto", "devices": 1, "num_nodes": 1}


def make_fabric(train: TrainConfig, precision: str):
    """A launched Fabric: under DDP this starts (or joins) the other processes."""
    import logging

    from lightning.fabric import Fabric

    # after the import, which sets its own level: kiln's first line says what precision and why, not Lightning's
    for name in ("lightning.fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)

    fabric = Fabric(accelerator=accelerator_for(train.device), precision=PRECISION[precision], **process_layout(train))
    fabric.launch()
    return fabric


def set_threads(threads: int | None, processes_on_this_machine: int = 1) -> None:
    # Oversubscribed threads make small CPU models many times slower; use exactly the cores we have,
    # shared among this machine's processes.
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads or max(1, cores // processes_on_this_machine))


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
