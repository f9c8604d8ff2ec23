"""The one training loop: every recipe trains, resumes, checkpoints and evaluates through here.

Lightning Fabric supplies devices, precision, DDP and loggers; the loop itself is the plain
PyTorch loop below, because Lightning's Trainer costs ~0.5 ms per step in hooks that small CPU
models cannot hide (bench/engine_overhead.py measures what this loop costs instead).
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from kiln.config import RunConfig, dump_config
from kiln.engine.checkpoint import FORMAT, load_checkpoint, load_weights, rng_state, save_atomic, set_rng_state
from kiln.engine.rundir import RunLog, Status, is_better, stdout_is_terminal, write_history, write_json
from kiln.engine.schedules import build_optimizer, build_scheduler
from kiln.engine.task import Splits, Task, TensorBatches
from kiln.errors import KilnError
from kiln.recipes import Recipe, get_recipe

PRECISION = {"32": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}
EVAL_BATCH = 1024


def set_threads(threads: int | None) -> None:
    # Oversubscribed threads make small CPU models many times slower; use exactly the cores we have.
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_fabric(cfg: RunConfig, run_dir: Path):
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    device = cfg.train.device
    if device == "cuda" and not torch.cuda.is_available():
        raise KilnError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or train.device=cpu")
    accelerator = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    loggers = []
    for name in cfg.train.loggers:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(root_dir=str(run_dir), name="tb", version=""))
        elif name == "csv":
            loggers.append(CSVLogger(root_dir=str(run_dir), name="csv", version=""))
        else:
            try:
                from lightning.pytorch.loggers import WandbLogger
                import wandb  # noqa: F401
            except ImportError:
                raise KilnError("train.loggers includes wandb but wandb is not installed; run: pip install wandb") from None
            loggers.append(WandbLogger(save_dir=str(run_dir), name=cfg.name, offline=os.environ.get("WANDB_MODE") != "online"))
    return Fabric(accelerator=accelerator, devices=1, precision=PRECISION[cfg.train.precision], loggers=loggers)


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """First SIGINT/SIGTERM asks the loop to save and stop; a second one stops at once."""
    flag = {"stop": False}

    def request_stop(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def epoch_means(sums: dict[str, torch.Tensor], count: int, prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}": (v / max(count, 1)).item() for k, v in sums.items()}


def accumulate(sums: dict[str, torch.Tensor], out: dict[str, torch.Tensor], n: int) -> None:
    for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + v.detach().float() * n


def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
    return len(next(iter(batch.values())))


@torch.no_grad()
def run_validation(fabric, task: torch.nn.Module, batches: TensorBatches) -> dict[str, float]:
    task.eval()
    sums, count = {}, 0
    for batch in batches.epoch():
        batch = fabric.to_device(batch)
        with fabric.autocast():
            out = task(batch, "val")
        n = batch_size_of(batch)
        accumulate(sums, out, n)
        count += n
    return epoch_means(sums, count, "val")


class GradientStats:
    """Per-epoch gradient health (the seed's total norm / max gradient), measured before clipping."""

    def __init__(self):
        self.norms: list[torch.Tensor] = []
        self.abs_max = torch.tensor(0.0)

    def add(self, model: torch.nn.Module) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            self.norms.append(torch.nn.utils.get_total_norm(grads).detach().float().cpu())
            self.abs_max = torch.maximum(self.abs_max, torch.stack([g.detach().abs().max() for g in grads]).max().float().cpu())

    def summary(self) -> dict[str, float]:
        norms = torch.stack(self.norms) if self.norms else torch.zeros(1)
        out = {"grad_norm_mean": norms.mean().item(), "grad_norm_max": norms.max().item(), "grad_abs_max": self.abs_max.item()}
        self.norms, self.abs_max = [], torch.tensor(0.0)
        return out


def export_weights(path: Path, task: Task, cfg: RunConfig, info: dict, epoch: int, metrics: dict) -> None:
    save_atomic({"kiln_format": FORMAT, "kind": "weights", "recipe": cfg.recipe, "config": cfg.model_dump(mode="json"),
                 "data_info": info, "epoch": epoch, "metrics": metrics, "state_dict": task.export_state()}, path)


def fit(cfg: RunConfig, run_dir: Path, *, resume: bool = False, init_from: str | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (fresh or resumed), then evaluate the best model on the test split."""
    recipe = get_recipe(cfg.recipe)
    log = RunLog(run_dir / "train.log")
    status = Status(run_dir / "status.json")
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", cfg.recipe) if resume else None

    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    recipe.prepare_data(cfg, log)
    splits = recipe.load_data(cfg, log)
    (run_dir / "config.yaml").write_text(dump_config(cfg))

    fabric = make_fabric(cfg, run_dir)
    raw_task = recipe.build_task(cfg, splits.info)
    raw_task.fit_data(splits.train)
    if not any(p.requires_grad for p in raw_task.parameters()):
        return fit_closed_form(cfg, run_dir, recipe, fabric, raw_task, splits, log, status)
    if init_from:
        source = load_checkpoint(init_from, cfg.recipe)
        load_weights(raw_task, source.get("state_dict", source.get("model")), init_from)
        log(f"Initialised weights from {init_from}")
    train_batches = TensorBatches(splits.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed)
    val_batches = TensorBatches(splits.val, max(cfg.train.batch_size, EVAL_BATCH), shuffle=False)
    steps_per_epoch = -(-len(train_batches) // cfg.train.accumulate_grad_batches)

    optimizer = build_optimizer(raw_task.parameters(), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch)
    task, optimizer = fabric.setup(raw_task, optimizer)
    ema = None
    if cfg.train.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(raw_task, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    evaluated = ema.module if ema is not None else raw_task  # the weights we validate and export

    epoch, start_batch, step, history = 0, 0, 0, []
    best = {"value": None, "epoch": None, "bad_epochs": 0}
    partial: dict[str, torch.Tensor] = {}
    partial_count = 0
    if state is not None:
        raw_task.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        epoch, start_batch, step = state["epoch"], state["batch_in_epoch"], state["global_step"]
        history, best = state["history"], state["best"]
        partial = {k: torch.tensor(v) for k, v in state["partial_sums"].items()}
        partial_count = state["partial_count"]
        if epoch >= cfg.train.max_epochs:
            raise KilnError(f"run '{run_dir}' already trained {epoch} of train.max_epochs={cfg.train.max_epochs} epochs; pass e.g. train.max_epochs={epoch + 10} to continue")
        write_history(run_dir, history, raw_task.history_file)
        log(f"Resuming {run_dir} at epoch {epoch + 1}" + (f", batch {start_batch + 1}" if start_batch else ""))

    if not resume:
        params = sum(p.numel() for p in raw_task.parameters())
        log(f"kiln {cfg.recipe} '{cfg.name}': {params:,} parameters, {train_batches.size:,} train samples, "
            f"device {fabric.device}, precision {cfg.train.precision}, run dir {run_dir}")
        from lightning.fabric.loggers import CSVLogger

        for logger in fabric.loggers:
            if not isinstance(logger, CSVLogger):  # Fabric's CSVLogger takes no hyperparameters; config.yaml has them
                logger.log_hyperparams(cfg.model_dump(mode="json"))

    def checkpoint(name: str, batch_in_epoch: int = 0) -> None:
        save_atomic({
            "kiln_format": FORMAT, "kind": "training-state", "recipe": cfg.recipe, "config": cfg.model_dump(mode="json"),
            "data_info": splits.info, "model": raw_task.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": step, "history": history, "best": best,
            "partial_sums": {k: v.item() for k, v in partial.items()}, "partial_count": partial_count,
        }, run_dir / "checkpoints" / name)

    def stopped_by_user(batch_in_epoch: int) -> None:
        checkpoint("last.ckpt", batch_in_epoch)
        status.update(state="interrupted", epoch=epoch, step=step)
        log(f"Interrupted at epoch {epoch + 1}, step {step}: saved checkpoints/last.ckpt. Resume with: kiln train --resume {run_dir}")

    status.update(state="running", epoch=epoch, step=step, max_epochs=cfg.train.max_epochs,
                  monitor=cfg.train.monitor, best=best["value"], run_dir=str(run_dir))
    accumulate_n = cfg.train.accumulate_grad_batches
    grad_stats = GradientStats() if cfg.train.log_grad_norm else None
    progress = make_progress() if stdout_is_terminal() else None
    stop_reason = "max_epochs"
    try:
        with stop_on_signals() as signals:
            while epoch < cfg.train.max_epochs:
                started = time.perf_counter()
                task.train()
                if progress is not None:
                    bar = progress.add_task(f"epoch {epoch + 1}", total=len(train_batches), completed=start_batch)
                for i, batch in enumerate(train_batches.epoch(epoch, start_batch), start=start_batch):
                    batch = fabric.to_device(batch)
                    is_update = (i + 1) % accumulate_n == 0 or i + 1 == len(train_batches)
                    with fabric.no_backward_sync(task, enabled=not is_update):
                        out = task(batch, "train")
                        fabric.backward(out["loss"] / accumulate_n)
                    if is_update:
                        if grad_stats is not None:
                            grad_stats.add(raw_task)
                        if cfg.train.gradient_clip_val:
                            fabric.clip_gradients(task, optimizer, max_norm=cfg.train.gradient_clip_val, error_if_nonfinite=False)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        scheduler.step()
                        step += 1
                        if ema is not None:
                            ema.update_parameters(raw_task)
                    n = batch_size_of(batch)
                    accumulate(partial, out, n)
                    partial_count += n
                    if progress is not None:
                        progress.update(bar, completed=i + 1)
                    if signals["stop"]:
                        stopped_by_user(i + 1)
                        return {"state": "interrupted"}
                    status.beat(epoch=epoch, step=step)
                if progress is not None:
                    progress.remove_task(bar)
                train_time = time.perf_counter() - started

                metrics = epoch_means(partial, partial_count, "train")
                metrics.update(run_validation(fabric, ema if ema is not None else task, val_batches))
                metrics = raw_task.finish_metrics(metrics)
                if grad_stats is not None:
                    metrics.update(grad_stats.summary())
                partial, partial_count, start_batch = {}, 0, 0
                epoch += 1
                if math.isnan(metrics["train_loss"]):
                    raise KilnError(f"training loss became NaN in epoch {epoch}; lower train.lr or set train.gradient_clip_val")
                if cfg.train.monitor not in metrics:
                    raise KilnError(f"train.monitor '{cfg.train.monitor}' is not a logged metric; choose one of: {', '.join(metrics)}")
                row = {"epoch": epoch, **metrics, "lr": optimizer.param_groups[0]["lr"],
                       "train_time_s": train_time, "epoch_time_s": time.perf_counter() - started}
                history.append(row)
                fabric.log_dict({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                write_history(run_dir, history, raw_task.history_file)

                improved = is_better(metrics[cfg.train.monitor], best["value"], cfg.train.mode)
                if improved:
                    best.update(value=metrics[cfg.train.monitor], epoch=epoch, bad_epochs=0)
                    checkpoint("best.ckpt")
                    export_weights(run_dir / "best_model.pt", evaluated, cfg, splits.info, epoch, metrics)
                else:
                    best["bad_epochs"] += 1
                checkpoint("last.ckpt")
                if cfg.train.checkpoint_every_n_epochs and epoch % cfg.train.checkpoint_every_n_epochs == 0:
                    checkpoint(f"epoch_{epoch:03d}.ckpt")
                log(raw_task.epoch_line(epoch, cfg.train.max_epochs, metrics, improved))
                warnings = raw_task.epoch_warnings(metrics)
                if grad_stats is not None and not math.isfinite(metrics["grad_norm_max"]):
                    warnings.append("non-finite gradients this epoch; lower train.lr, set train.gradient_clip_val or check the data for NaN")
                for warning in warnings:
                    log(f"Warning: {warning}")
                status.update(epoch=epoch, step=step, best=best["value"], best_epoch=best["epoch"])
                if signals["stop"]:
                    stopped_by_user(0)
                    return {"state": "interrupted"}
                if cfg.train.patience and best["bad_epochs"] >= cfg.train.patience:
                    stop_reason = "early_stopping"
                    log(f"Early stopping: {cfg.train.monitor} did not improve for {cfg.train.patience} epochs (best {best['value']:.4f} at epoch {best['epoch']})")
                    break
    except KeyboardInterrupt:
        status.update(state="interrupted", epoch=epoch, step=step)
        log(f"Stopped at once by a second interrupt; resume from the last saved epoch with: kiln train --resume {run_dir}")
        return {"state": "interrupted"}
    except BaseException as err:
        status.update(state="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise
    finally:
        if progress is not None:
            progress.stop()
        for logger in fabric.loggers:
            logger.finalize("success")

    export_weights(run_dir / "final_model.pt", evaluated, cfg, splits.info, epoch, history[-1] if history else {})
    status.update(state="evaluating", epoch=epoch, step=step, stop_reason=stop_reason)
    results = evaluate_run(run_dir, recipe=recipe, cfg=cfg, splits=splits, log=log)
    status.update(state="finished")
    return results


def fit_closed_form(cfg: RunConfig, run_dir: Path, recipe: Recipe, fabric, task: Task, splits: Splits, log, status) -> dict[str, Any]:
    """A model without trainable parameters (fitted by Task.fit_data): validate once, save, evaluate."""
    log(f"kiln {cfg.recipe} '{cfg.name}': no trainable parameters; fitted in closed form on "
        f"{len(next(iter(splits.train.values()))):,} train samples")
    module = fabric.setup_module(task)
    val_batches = TensorBatches(splits.val, max(cfg.train.batch_size, EVAL_BATCH), shuffle=False)
    metrics = task.finish_metrics(run_validation(fabric, module, val_batches))
    history = [{"epoch": 0, **metrics}]
    write_history(run_dir, history, task.history_file)
    for name in ("best_model.pt", "final_model.pt"):
        export_weights(run_dir / name, task, cfg, splits.info, 0, metrics)
    status.update(state="evaluating", epoch=0, step=0, max_epochs=0, monitor=cfg.train.monitor, best_epoch=0,
                  best=metrics.get(cfg.train.monitor), stop_reason="closed_form", run_dir=str(run_dir))
    results = evaluate_run(run_dir, recipe=recipe, cfg=cfg, splits=splits, log=log)
    status.update(state="finished")
    return results


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    progress.start()
    return progress


def load_run_task(run_dir: Path, cfg: RunConfig, recipe: Recipe, info: dict, which: str = "best_model.pt") -> Task:
    weights = load_checkpoint(run_dir / which, cfg.recipe)
    task = recipe.build_task(cfg, weights.get("data_info") or info)
    load_weights(task, weights["state_dict"], run_dir / which)
    return task.eval()


def evaluate_run(run_dir: Path, *, recipe: Recipe | None = None, cfg: RunConfig | None = None, splits: Splits | None = None,
                 log: RunLog | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a run's best model on the held-out split: test_results.json, then report/."""
    from kiln.config import load_config

    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise KilnError(f"'{run_dir}' is not a kiln run directory (no config.yaml); pass the --run-dir of a kiln train run")
        cfg = load_config(run_dir / "config.yaml")
        set_threads(cfg.train.threads)
    recipe = recipe or get_recipe(cfg.recipe)
    log = log or RunLog(run_dir / "train.log")
    if splits is None:
        recipe.prepare_data(cfg, log)
        splits = recipe.load_data(cfg, log)
    task = load_run_task(run_dir, cfg, recipe, splits.info)
    with torch.no_grad():
        results = recipe.evaluate(task, splits, cfg, options or {})
    (run_dir / "report").mkdir(exist_ok=True)
    if options:  # an extra evaluation (e.g. a user's map) is kept beside the report, not as the test split
        write_json(run_dir / "report" / f"{results.get('name', 'evaluation')}.json", results)
    else:
        write_json(run_dir / "test_results.json", results)
        recipe.report(run_dir, task, splits, cfg)
    return results
