"""`kiln lr-find CONFIG`: the learning-rate range test (Smith 2017, as fastai and torch-lr-finder run it).

The lr grows exponentially from --min-lr to --max-lr over --steps optimizer steps while the model
trains through the engine's own step (same precision, accumulation, clipping and parameter groups);
the test stops early once the smoothed loss (a causal EMA, as fastai's) exceeds 4x its minimum or turns
non-finite. The suggestion is the lr of the steepest descent of the loss against log lr, before its
minimum, on a centred moving average: an EMA lags by ~1/(1 - beta) steps, which at 100 steps over five
decades would move the suggestion up by most of a decade.

torch-lr-finder runs its own loop (model(inputs), criterion(outputs, labels), its own AMP), which
would bypass the engine's step; the short loop here keeps one code path for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.config import RunConfig
from kiln.engine.devices import accelerator_for, make_fabric, resolve_precision, seed_everything, set_threads
from kiln.engine.report import plt, save_figure
from kiln.engine.files import make_dirs, write_json
from kiln.engine.rundir import RunLog, Status
from kiln.engine.fit import load_splits
from kiln.engine.loop import NonFinite, Run
from kiln.errors import KilnError

SMOOTHING = 0.98   # EMA of the loss, bias-corrected
DIVERGED = 4.0     # stop when the smoothed loss exceeds this times its minimum


def smoothed(losses: list[float]) -> np.ndarray:
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        out.append(avg / (1 - SMOOTHING ** i))
    return np.array(out)


def divergence_scale(curve: np.ndarray) -> float:
    """How far above its minimum the smoothed loss may rise: the minimum itself for a positive loss (4x the
    minimum, as usual); for losses that go negative (an NLL), the drop so far."""
    low = curve.min()
    return float(low) if low > 0 else max(float(curve[0] - low), 1e-8)


def centred(losses: list[float]) -> np.ndarray:
    """A moving average over ~5% of the points on each side, without lag (edges repeat the end values)."""
    half = max(1, len(losses) // 20)
    padded = np.concatenate([[losses[0]] * half, losses, [losses[-1]] * half])
    return np.convolve(padded, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the loss falls fastest per decade of lr, up to its minimum (both on the centred average)."""
    curve = centred(losses)
    end = int(np.argmin(curve)) + 1
    if end < 3:
        return None
    slope = np.gradient(curve[:end], np.log10(lrs[:end]))
    return float(lrs[int(np.argmin(slope))])


def lr_range_test(cfg: RunConfig, recipe, out: Path, *, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100) -> dict[str, Any]:
    if not 0 < min_lr < max_lr:
        raise KilnError(f"--min-lr ({min_lr:g}) must be positive and below --max-lr ({max_lr:g})")
    if steps < 10:
        raise KilnError(f"--steps {steps} is too few for a range test; use at least 10 (100 is usual)")
    # the lr follows the test's own schedule (set below), not the config's
    train = cfg.train.model_copy(update={"scheduler": cfg.train.scheduler.model_copy(update={"name": "none"})})
    cfg = cfg.model_copy(update={"train": train})
    precision, why = resolve_precision(train.precision, accelerator_for(train.device))
    fabric = make_fabric(train.model_copy(update={"devices": 1, "strategy": "auto"}), precision)
    make_dirs(out)
    log = RunLog(out / "lr_find.log")
    log(f"Precision: {precision} ({why})")
    set_threads(train.threads)
    seed_everything(train.seed, train.deterministic)
    splits = load_splits(fabric, recipe, cfg, log)
    task = recipe.build_task(cfg, splits.info)
    task.fit_data(splits.train)
    if not any(p.requires_grad for p in task.parameters()):
        raise KilnError(f"this {recipe.name} model has no trainable parameters; there is no learning rate to find")
    # the test only trains: no callbacks (no checkpoints, EMA, loggers or health warnings: a diverging loss is its point)
    run = Run(fabric, cfg, task, splits, out, log, Status([]), precision, train.seed, callbacks=[])
    growth = (max_lr / min_lr) ** (1 / (steps - 1))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: min_lr * growth ** step / train.lr)
    log(f"LR range test: {steps} steps from {min_lr:g} to {max_lr:g} ({run.steps_per_epoch} steps per epoch)")

    lrs, losses, stop = [], [], None
    epoch = 0
    while stop is None:
        run.state.batch_in_epoch = 0
        for batch, window, is_update in run.micro_batches(epoch):
            run.forward_backward(batch, window, is_update)
            if not is_update:
                continue
            lr = run.optimizer.param_groups[0]["lr"]
            try:
                loss = run.update()
            except NonFinite:
                stop = f"the loss became non-finite at lr {lr:.3g}"
                break
            lrs.append(lr)
            losses.append(loss)
            curve = smoothed(losses)
            if len(losses) > 5 and curve[-1] - curve.min() > (DIVERGED - 1) * divergence_scale(curve):
                stop = f"the smoothed loss passed {DIVERGED:g}x its minimum at lr {lr:.3g}"
                break
            if len(lrs) == steps:
                stop = f"reached --max-lr after {steps} steps"
                break
        epoch += 1
    suggestion = suggest(lrs, losses) if len(losses) >= 3 else None
    curve = centred(losses) if losses else np.array([])
    result = {"suggested_lr": suggestion, "min_loss_lr": float(lrs[int(np.argmin(curve))]) if losses else None,
              "steps": len(lrs), "stopped": stop, "path": str(out)}
    write_json(out / "lr_find.json", {**result, "min_lr": min_lr, "max_lr": max_lr, "lr": lrs, "loss": losses,
                                     "smoothed_loss": curve.tolist()})
    plot(lrs, losses, curve, suggestion, out / "lr_find.png", cfg.name)
    log(f"LR range test: {stop}; suggested lr {suggestion:.3g}" if suggestion else f"LR range test: {stop}; no clear descent, no suggestion")
    return result


def plot(lrs: list[float], losses: list[float], curve: np.ndarray, suggestion: float | None, out: Path, name: str | None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="lightgrey", lw=1, label="loss per step")
    ax.plot(lrs, curve, color="tab:blue", label="moving average")
    if suggestion:
        ax.axvline(suggestion, color="tab:red", ls="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    if len(curve):
        low, scale = float(curve.min()), divergence_scale(curve)
        ax.set_ylim(low - 0.1 * scale, min(float(curve.max()), low + DIVERGED * scale) + 0.1 * scale)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("train loss")
    ax.set_title(f"LR range test: {name}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, out)
