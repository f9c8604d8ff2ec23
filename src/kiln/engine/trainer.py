"""The one training loop: every recipe trains, resumes, checkpoints and evaluates through here.

Lightning Fabric supplies devices, precision and DDP; the loop itself is plain PyTorch, because
Lightning's Trainer costs ~0.5 ms per step in hooks that small CPU models cannot hide
(bench/engine_overhead.py measures what this loop costs instead). It reads top to bottom:

    fit()            precision, processes, run record; one run or its phases (phases.py)
    fit_one()        build the task; restore, or start from given weights; train; evaluate
    Run.train()      epochs until max_epochs / max_steps / early stopping; Ctrl-C saves and stops
    Run.train_epoch()  micro-batches; an optimizer update every accumulate_grad_batches
    Run.update()     clip, check for non-finite values, step, EMA, health (one host sync)
    Run.end_period() validate, history, best/last checkpoints, console line (every epoch or N steps)

`LoopState` is where a run stands: the checkpoint payload and what status.json shows.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from kiln.config import RunConfig, dump_config
from kiln.engine.batches import make_batches
from kiln.engine.checkpoint import FORMAT, link_aliases, load_checkpoint, load_weights, rng_state, save_atomic, set_rng_state
from kiln.engine.devices import accelerator_for, make_fabric, process_layout, resolve_precision, seed_everything, set_threads
from kiln.engine.health import GradientStats, HealthMonitor
from kiln.engine.media import MediaLog, log_parameter_histograms, make_loggers
from kiln.engine.rundir import RunLog, Status, is_better, stdout_is_terminal, write_history, write_json, write_run_record
from kiln.engine.schedules import build_optimizer, build_scheduler
from kiln.engine.task import Splits, Task
from kiln.errors import KilnError


class Interrupted(Exception):
    """A stop request (Ctrl-C, SIGTERM) reached an optimizer-update boundary on every rank."""


class NonFinite(KilnError):
    """The loss or the gradient norm became NaN or inf; raised before that update touches the weights."""


@dataclass
class LoopState:
    """Where a run stands. Saved whole in every checkpoint; status.json shows its counters."""

    epoch: int = 0                # epochs completed
    step: int = 0                 # optimizer steps taken
    batch_in_epoch: int = 0       # micro-batches of the current epoch already trained
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per validation
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "epoch": None, "step": None, "bad_evals": 0})
    sums: dict[str, Tensor] = field(default_factory=dict)  # train metric sums since the last validation
    count: int = 0                # samples in `sums`

    def payload(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "history": self.history, "best": self.best, "partial_count": self.count,
                "partial_sums": {k: v.item() for k, v in self.sums.items()}}

    @classmethod
    def from_payload(cls, saved: dict[str, Any]) -> LoopState:
        best = dict(saved["best"])
        best.setdefault("bad_evals", best.pop("bad_epochs", 0))  # checkpoints written before step intervals
        return cls(epoch=saved["epoch"], step=saved["global_step"], batch_in_epoch=saved["batch_in_epoch"],
                   history=saved["history"], best=best, count=saved["partial_count"],
                   sums={k: torch.tensor(v) for k, v in saved["partial_sums"].items()})

    def status(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "best": self.best["value"], "best_epoch": self.best["epoch"]}


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """First SIGINT/SIGTERM asks the loop to save and stop at the next update; a second one stops at once."""
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


def accumulate(sums: dict[str, Tensor], out: dict[str, Tensor], n: int) -> None:
    for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + v.detach().float() * n


def batch_size_of(batch: dict[str, Tensor]) -> int:
    return len(next(iter(batch.values())))


def reduced_means(fabric, sums: dict[str, Tensor], count: int, prefix: str) -> dict[str, float]:
    """Sample-weighted means over every rank (one all-reduce under DDP)."""
    keys = list(sums)  # the order the task returned them in, the same on every rank
    values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float32, device=fabric.device) for k in keys]
                         + [torch.tensor(float(count), device=fabric.device)])
    if fabric.world_size > 1:
        values = fabric.all_reduce(values, reduce_op="sum")
    values = values.tolist()
    return {f"{prefix}_{k}": v / max(values[-1], 1) for k, v in zip(keys, values)}


def export_weights(path: Path, task: Task, cfg: RunConfig, info: dict, epoch: int, metrics: dict) -> None:
    save_atomic({"kiln_format": FORMAT, "kind": "weights", "recipe": cfg.recipe, "config": cfg.model_dump(mode="json"),
                 "data_info": info, "epoch": epoch, "metrics": metrics, "state_dict": task.state_dict()}, path)


def calibrate(task: Task, val) -> None:
    """Task.calibrate on the validation split only, in eval mode under no_grad (the caller restores train mode)."""
    task.eval()
    with torch.no_grad():
        task.calibrate(val)


def calibrate_saved(paths: list[Path], task: Task, val) -> None:
    """Task.calibrate on each saved weight file's weights, written back in place (atomically). Runs once, when
    training ends, and only for tasks that define calibrate: a fit on validation costs about one validation pass."""
    if type(task).calibrate is Task.calibrate:
        return
    for path in paths:
        payload = torch.load(path, map_location=next(task.parameters(), torch.empty(0)).device, weights_only=False)
        task.load_state_dict(payload["state_dict"])
        calibrate(task, val)
        save_atomic({**payload, "state_dict": task.state_dict()}, path)


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    progress.start()
    return progress


class Run:
    """One training run (or one phase of a multi-phase run) in one run directory."""

    def __init__(self, fabric, cfg: RunConfig, task: Task, splits: Splits, run_dir: Path, log: RunLog, status: Status,
                 precision: str, batch_seed: int):
        t = cfg.train
        self.fabric, self.cfg, self.t, self.splits, self.run_dir, self.log, self.status = fabric, cfg, t, splits, run_dir, log, status
        self.precision, self.zero = precision, fabric.is_global_zero
        shard = {"rank": fabric.global_rank, "world": fabric.world_size}
        self.train_batches = make_batches(splits.train, t.batch_size, shuffle=True, seed=batch_seed, even=True, **shard,
                                          num_workers=t.num_workers, pin_memory=fabric.device.type == "cuda")
        self.val_batches = make_batches(splits.val, t.eval_batch_size, shuffle=False, even=False, **shard,
                                        num_workers=t.num_workers, pin_memory=fabric.device.type == "cuda")
        self.test_batches = make_batches(splits.test, t.eval_batch_size, shuffle=False, even=False, **shard, num_workers=t.num_workers,
                                         pin_memory=fabric.device.type == "cuda") if t.log_test_metrics else None
        self.batches_per_epoch = len(self.train_batches)
        self.steps_per_epoch = -(-self.batches_per_epoch // t.accumulate_grad_batches)

        self.task = task  # the plain module: state dicts, hooks, EMA source
        optimizer = build_optimizer(task, t)
        self.scheduler = build_scheduler(optimizer, t, self.steps_per_epoch)
        self.model, self.optimizer = fabric.setup(task, optimizer)  # wrapped: precision, device, DDP
        self.ema = None
        if t.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(task, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
        self.evaluated = self.ema.module if self.ema is not None else task  # the weights we validate and export

        self.state = LoopState()
        self.loggers = make_loggers(t.loggers, run_dir, cfg.name) if self.zero else []
        self.media = MediaLog(self.loggers)
        self.health = HealthMonitor(t.health, t.patience)
        self.grad_stats = GradientStats() if t.log_grad_norm else None
        self.signals: dict[str, bool] = {"stop": False}
        self.early_stopped = self.stop_requested = False
        self.progress = None
        self.window: list[Tensor] = []  # losses of the micro-batches in the current accumulation window
        self.period_started = self.train_time = 0.0

    # ------------------------------------------------------------------ start, restore, checkpoints

    def start(self, init_from: str | None) -> None:
        if init_from:
            source = load_checkpoint(init_from, self.cfg.recipe)
            load_weights(self.task, source.get("state_dict", source.get("model")), init_from)
            if self.ema is not None:
                self.ema.module.load_state_dict(self.task.state_dict())
            self.log(f"Initialised weights from {init_from}")
        params = sum(p.numel() for p in self.task.parameters())
        trained = sum(p.numel() for p in self.task.parameters() if p.requires_grad)
        frozen = f" ({params - trained:,} frozen)" if trained < params else ""
        processes = f" x {self.fabric.world_size} processes" if self.fabric.world_size > 1 else ""
        self.log(f"kiln {self.cfg.recipe} '{self.cfg.name}': {params:,} parameters{frozen}, {self.train_batches.size:,} train samples, "
                 f"device {self.fabric.device}{processes}, precision {self.precision}, run dir {self.run_dir}")
        for logger in self.loggers:
            if type(logger).__name__ != "CSVLogger":  # Fabric's CSVLogger takes no hyperparameters; config.yaml has them
                logger.log_hyperparams(self.cfg.model_dump(mode="json"))

    def restore(self, saved: dict[str, Any]) -> None:
        self.task.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state_dict(saved["ema"])
        set_rng_state(saved["rng"])
        self.state = LoopState.from_payload(saved)
        s = self.state
        if self.done():
            raise KilnError(f"run '{self.run_dir}' already trained {s.epoch} of train.max_epochs={self.t.max_epochs} epochs "
                            f"({s.step} steps); pass e.g. train.max_epochs={s.epoch + 10} to continue")
        if self.zero:
            write_history(self.run_dir, s.history, self.task.history_file)
        self.log(f"Resuming {self.run_dir} at epoch {s.epoch + 1}" + (f", batch {s.batch_in_epoch + 1}" if s.batch_in_epoch else ""))

    def save_checkpoint(self, name: str) -> None:
        if not self.zero:
            return
        save_atomic({
            "kiln_format": FORMAT, "kind": "training-state", "recipe": self.cfg.recipe, "config": self.cfg.model_dump(mode="json"),
            "data_info": self.splits.info, "model": self.task.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
            **self.state.payload(),
        }, self.run_dir / "checkpoints" / name)

    def export(self, name: str, metrics: dict[str, Any]) -> None:
        if self.zero:
            export_weights(self.run_dir / name, self.evaluated, self.cfg, self.splits.info, self.state.epoch, metrics)
            link_aliases(self.run_dir, self.task.file_aliases, name)

    # ------------------------------------------------------------------ the loop

    def done(self) -> bool:
        s = self.state
        return self.early_stopped or s.epoch >= self.t.max_epochs or bool(self.t.max_steps and s.step >= self.t.max_steps)

    def train(self) -> str:
        """Train to the end; returns "finished" or "interrupted" (state saved in checkpoints/last.ckpt)."""
        s = self.state
        self.status.update(state="running", max_epochs=self.t.max_epochs, max_steps=self.t.max_steps, monitor=self.t.monitor,
                           run_dir=str(self.run_dir), **s.status())
        self.progress = make_progress() if self.zero and stdout_is_terminal() else None
        try:
            with stop_on_signals() as self.signals:
                self.period_started = time.perf_counter()
                while not self.done():
                    self.train_epoch()
                if not s.history or s.history[-1].get("step") != s.step:  # steps trained since the last validation
                    self.end_period()
        except Interrupted:
            self.save_checkpoint("last.ckpt")
            self.status.update(state="interrupted", **s.status())
            self.log(f"Interrupted at epoch {s.epoch + 1}, step {s.step}: saved checkpoints/last.ckpt. "
                     f"Resume with: kiln train --resume {self.run_dir}")
            return "interrupted"
        except KeyboardInterrupt:
            self.status.update(state="interrupted", **s.status())
            self.log(f"Stopped at once by a second interrupt; resume from the last saved point with: kiln train --resume {self.run_dir}")
            return "interrupted"
        except BaseException as err:
            self.status.update(state="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise
        finally:
            if self.progress is not None:
                self.progress.stop()
            for logger in self.loggers:
                logger.finalize("success")
        return "finished"

    def micro_batches(self, epoch: int) -> Iterator[tuple[dict[str, Tensor], int, bool]]:
        """(batch on the device, accumulation window length, whether an update follows it) from the saved
        position on. Windows are counted from the epoch's start, so a resumed epoch keeps them aligned."""
        s, k = self.state, self.t.accumulate_grad_batches
        for batch in self.train_batches.epoch(epoch, s.batch_in_epoch):
            window_start = s.batch_in_epoch - s.batch_in_epoch % k
            window = min(k, self.batches_per_epoch - window_start)  # the epoch's last window may be shorter
            s.batch_in_epoch += 1
            yield self.fabric.to_device(batch), window, s.batch_in_epoch - window_start == window

    def train_epoch(self) -> None:
        s = self.state
        self.task.on_epoch_start(s.epoch, self.t.max_epochs)
        self.model.train()
        started = time.perf_counter()
        bar = self.progress.add_task(f"epoch {s.epoch + 1}", total=self.batches_per_epoch, completed=s.batch_in_epoch) if self.progress else None
        for batch, window, is_update in self.micro_batches(s.epoch):
            self.forward_backward(batch, window, is_update)
            if bar is not None:
                self.progress.update(bar, completed=s.batch_in_epoch)
            if not is_update:
                continue
            self.update()
            if self.t.val_every_n_steps and s.step % self.t.val_every_n_steps == 0:
                self.train_time += time.perf_counter() - started
                self.end_period()
                started = time.perf_counter()
            if self.t.checkpoint_every_n_steps and s.step % self.t.checkpoint_every_n_steps == 0:
                self.save_checkpoint(f"step_{s.step:07d}.ckpt")
            if self.stop_requested:
                raise Interrupted
            if self.done():
                break
            self.status.beat(**s.status())
        if bar is not None:
            self.progress.remove_task(bar)
        self.train_time += time.perf_counter() - started
        if s.batch_in_epoch == self.batches_per_epoch:  # a whole epoch (not cut short by max_steps or early stopping)
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            if not self.t.val_every_n_steps:
                self.end_period()
                if self.t.checkpoint_every_n_epochs and s.epoch % self.t.checkpoint_every_n_epochs == 0:
                    self.save_checkpoint(f"epoch_{s.epoch:03d}.ckpt")
                    if self.zero:
                        link_aliases(self.run_dir, self.task.file_aliases, "checkpoints/epoch_{epoch:03d}.ckpt", epoch=s.epoch)
                if self.agree_to_stop():  # a Ctrl-C during validation stops here, not one step into the next epoch
                    raise Interrupted

    def forward_backward(self, batch: dict[str, Tensor], window: int, is_update: bool) -> None:
        s = self.state
        with self.fabric.no_backward_sync(self.model, enabled=not is_update):
            out = self.model(batch, "train")  # Fabric's wrapper applies the precision's autocast
            self.fabric.backward(out["loss"] / window)
        n = batch_size_of(batch)
        accumulate(s.sums, out, n)
        s.count += n
        self.window.append(out["loss"].detach())

    def update(self) -> float:
        """One optimizer update; returns the window's train loss. Its single host sync checks the loss and gradient
        norm for non-finite values and agrees with every rank on whether to stop; nothing non-finite reaches the weights."""
        s, t = self.state, self.t
        norm = self.fabric.clip_gradients(self.model, self.optimizer, max_norm=t.gradient_clip_val or math.inf,
                                          error_if_nonfinite=False)  # the total norm before clipping
        loss = self.window[0] if len(self.window) == 1 else torch.stack(self.window).mean()
        self.window = []
        if self.fabric.world_size == 1:
            loss_value, norm_value = torch.stack([loss.float(), norm.float().to(loss.device)]).tolist()
            stop = self.signals["stop"]
        else:  # one all-reduce: the mean loss and norm, whether any rank saw a non-finite value or was asked to stop
            flags = torch.stack([loss.float(), norm.float().to(loss.device), torch.tensor(float(self.signals["stop"]), device=loss.device)])
            finite = torch.isfinite(flags[:2])
            flags = torch.cat([flags[:2].nan_to_num() / self.fabric.world_size, (~finite).float().sum()[None], flags[2:]])
            loss_value, norm_value, bad, stop = self.fabric.all_reduce(flags, reduce_op="sum").tolist()
            loss_value, norm_value = (loss_value, norm_value) if not bad else (math.nan, math.nan)
        # 16-mixed scales the loss: an inf gradient there is the scaler's business (it skips that step)
        if not math.isfinite(loss_value) or (not math.isfinite(norm_value) and self.precision != "16-mixed"):
            what = "loss" if not math.isfinite(loss.item()) else "gradient norm"
            raise NonFinite(f"the {what} became non-finite at epoch {s.epoch + 1}, step {s.step + 1}; stopped before that update, "
                            f"checkpoints/last.ckpt keeps the last good state; lower train.lr, set train.gradient_clip_val "
                            f"or check the data for NaN/inf")
        if self.grad_stats is not None:
            self.grad_stats.add(norm_value, self.task.parameters())
        ends_period = bool(self.t.val_every_n_steps and (s.step + 1) % self.t.val_every_n_steps == 0) or (
            not self.t.val_every_n_steps and s.batch_in_epoch == self.batches_per_epoch)
        if t.log_histograms and ends_period and self.media:
            log_parameter_histograms(self.media, self.task, s.step + 1, "gradients")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        s.step += 1
        if self.ema is not None:
            self.ema.update_parameters(self.task)
        self.stop_requested = bool(stop)
        for warning in self.health.after_step(s.step, loss_value, norm_value):
            self.log(f"Warning: {warning}")
        if t.log_every_n_steps and s.step % t.log_every_n_steps == 0:
            for logger in self.loggers:
                logger.log_metrics({"train_loss_step": loss_value, "grad_norm": norm_value, **self.learning_rates()}, step=s.step)
        return loss_value

    def agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop (a collective under DDP, so every rank decides alike)."""
        stop = torch.tensor(float(self.signals["stop"]), device=self.fabric.device)
        return bool((self.fabric.all_reduce(stop, reduce_op="sum") if self.fabric.world_size > 1 else stop).item())

    def learning_rates(self) -> dict[str, float]:
        groups = self.optimizer.param_groups
        return {"lr": groups[0]["lr"], **{f"lr_{g['name']}": g["lr"] for g in groups[1:]}}

    # ------------------------------------------------------------------ validation points

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Tensor] | None]:
        """Metrics over the validation split (and the test split with train.log_test_metrics; all ranks), plus the
        first validation batch for the media hook."""
        model = self.ema if self.ema is not None else self.model
        model.eval()
        metrics, first = {}, None
        for prefix, batches in (("val", self.val_batches), ("test", self.test_batches)):
            if batches is None:
                continue
            sums, count = {}, 0
            for batch in batches.epoch():
                batch = self.fabric.to_device(batch)
                with self.fabric.autocast():
                    out = model(batch, "val")
                n = batch_size_of(batch)
                accumulate(sums, out, n)
                count += n
                first = batch if first is None else first
            metrics.update(reduced_means(self.fabric, sums, count, prefix))
        self.model.train()
        return metrics, first

    def end_period(self) -> None:
        """A validation point (every epoch, or every val_every_n_steps): metrics, history, checkpoints, console."""
        s, t = self.state, self.t
        metrics = reduced_means(self.fabric, s.sums, s.count, "train")
        val_metrics, first_val_batch = self.validate()
        metrics = self.task.finish_metrics({**metrics, **val_metrics})
        if self.grad_stats is not None:
            metrics.update(self.grad_stats.summary())
        s.sums, s.count = {}, 0
        if t.monitor not in metrics:
            raise KilnError(f"train.monitor '{t.monitor}' is not a logged metric; choose one of: {', '.join(metrics)}")
        epoch = s.epoch if not s.batch_in_epoch else round(s.epoch + s.batch_in_epoch / self.batches_per_epoch, 4)
        row = {"epoch": epoch, "step": s.step, **metrics, **self.learning_rates(), "train_time_s": self.train_time,
               "epoch_time_s": time.perf_counter() - self.period_started}
        self.train_time, self.period_started = 0.0, time.perf_counter()
        s.history.append(row)

        improved = is_better(metrics[t.monitor], s.best["value"], t.mode)
        if improved:
            s.best.update(value=metrics[t.monitor], epoch=epoch, step=s.step, bad_evals=0)
        else:
            s.best["bad_evals"] += 1
        if t.patience and s.best["bad_evals"] >= t.patience:
            self.early_stopped = True
        if self.zero:
            write_history(self.run_dir, s.history, self.task.history_file)
            for logger in self.loggers:
                logger.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=s.step)
            if self.media:
                with torch.no_grad():
                    self.evaluated.eval()  # the validated weights (EMA when on), in eval mode
                    self.evaluated.log_media(self.media, first_val_batch, s.step)
                    self.model.train()
                if t.log_histograms:
                    log_parameter_histograms(self.media, self.evaluated, s.step, "weights")
            if improved:
                self.save_checkpoint("best.ckpt")
                self.export("best_model.pt", metrics)
            self.save_checkpoint("last.ckpt")
        line = self.task.epoch_line(max(1, math.ceil(epoch)), t.max_epochs, metrics, improved)
        self.log(f"Step {s.step}: {line}" if t.val_every_n_steps else line)
        for warning in self.task.epoch_warnings(metrics) + self.health.after_validation(s.best["bad_evals"], t.monitor):
            self.log(f"Warning: {warning}")
        self.status.update(**s.status())
        if self.early_stopped:
            self.log(f"Early stopping: {t.monitor} did not improve for {t.patience} validations "
                     f"(best {s.best['value']:.4f} at epoch {s.best['epoch']})")

    def finish(self, recipe) -> dict[str, Any]:
        s = self.state
        self.export("final_model.pt", s.history[-1] if s.history else {})
        reason = "early_stopping" if self.early_stopped else ("max_steps" if self.t.max_steps and s.step >= self.t.max_steps else "max_epochs")
        self.status.update(state="evaluating", stop_reason=reason, **s.status())
        self.fabric.barrier()
        if not self.zero:
            return {"state": "finished"}
        calibrate_saved([self.run_dir / "best_model.pt", self.run_dir / "final_model.pt"], self.evaluated, self.splits.val)
        results = evaluate_run(self.run_dir, recipe, self.cfg, splits=self.splits, log=self.log, device=self.fabric.device)
        self.status.update(state="finished")
        return results


# ---------------------------------------------------------------------- entry points

def fit(cfg: RunConfig, recipe, run_dir: Path, *, resume: bool = False, init_from: str | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (fresh or resumed), then evaluate the best model on the test split.

    Under DDP every process calls this; only rank 0 writes files. A config with `phases:` runs them in
    order, each in run_dir/phase_K (see phases.py)."""
    precision, why = resolve_precision(cfg.train.precision, accelerator_for(cfg.train.device))
    fabric = make_fabric(cfg.train, precision)
    run_dir = Path(fabric.broadcast(str(run_dir)))  # ranks started by torchrun may have made other default names
    zero = fabric.is_global_zero
    log = RunLog([run_dir / "train.log"] if zero else [], quiet=not zero)
    log(f"Precision: {precision} (" + (f"auto: {why})" if cfg.train.precision == "auto" else f"{why})"))
    set_threads(cfg.train.threads, process_layout(cfg.train)["devices"])
    if zero:
        write_run_record(run_dir, precision, why, fabric.world_size)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    if cfg.phases:
        from kiln.engine.phases import fit_phases

        results = fit_phases(fabric, cfg, recipe, run_dir, log, precision, resume=resume, init_from=init_from)
    else:
        splits = load_splits(fabric, recipe, cfg, log)
        status = Status([run_dir / "status.json"] if zero else [])
        results = fit_one(fabric, cfg, recipe, splits, run_dir, log, status, precision, resume=resume, init_from=init_from)
    if fabric.world_size > 1:  # every rank waits for rank 0's evaluation, then all leave the process group together
        fabric.barrier()
        torch.distributed.destroy_process_group()
    return results


def load_splits(fabric, recipe, cfg: RunConfig, log: RunLog) -> Splits:
    """Rank 0 makes the dataset if it is missing while the others wait; then every rank reads it."""
    if fabric.is_global_zero:
        recipe.prepare_data(cfg, log)
    fabric.barrier()
    return recipe.load_data(cfg, log)


def fit_one(fabric, cfg: RunConfig, recipe, splits: Splits, run_dir: Path, log: RunLog, status: Status, precision: str, *,
            resume: bool = False, init_from: str | None = None, batch_seed: int | None = None) -> dict[str, Any]:
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    task = recipe.build_task(cfg, splits.info)
    task.fit_data(splits.train)
    if not any(p.requires_grad for p in task.parameters()):
        return fit_closed_form(fabric, cfg, recipe, task, splits, run_dir, log, status)
    run = Run(fabric, cfg, task, splits, run_dir, log, status, precision, cfg.train.seed if batch_seed is None else batch_seed)
    if resume:
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise KilnError(f"cannot resume '{run_dir}': no checkpoints/last.ckpt there; pass a run directory written by kiln train")
        run.restore(load_checkpoint(last, cfg.recipe))
    else:
        run.start(init_from)
    if run.train() == "interrupted":
        return {"state": "interrupted"}
    return run.finish(recipe)


def fit_closed_form(fabric, cfg: RunConfig, recipe, task: Task, splits: Splits, run_dir: Path, log: RunLog, status: Status) -> dict[str, Any]:
    """A model without trainable parameters (fitted by Task.fit_data): validate once, save, evaluate."""
    samples = batch_size_of(splits.train) if isinstance(splits.train, dict) else len(splits.train)
    log(f"kiln {cfg.recipe} '{cfg.name}': no trainable parameters; fitted in closed form on {samples:,} train samples")
    module = fabric.setup_module(task)
    batches = make_batches(splits.val, cfg.train.eval_batch_size, shuffle=False, even=False, rank=fabric.global_rank, world=fabric.world_size)
    sums, count = {}, 0
    with torch.no_grad():
        for batch in batches.epoch():
            batch = fabric.to_device(batch)
            accumulate(sums, module(batch, "val"), batch_size_of(batch))
            count += batch_size_of(batch)
    metrics = task.finish_metrics(reduced_means(fabric, sums, count, "val"))
    if not fabric.is_global_zero:
        return {"state": "finished"}
    write_history(run_dir, [{"epoch": 0, "step": 0, **metrics}], task.history_file)
    calibrate(task, splits.val)
    for name in ("best_model.pt", "final_model.pt"):
        export_weights(run_dir / name, task, cfg, splits.info, 0, metrics)
        link_aliases(run_dir, task.file_aliases, name)
    status.update(state="evaluating", epoch=0, step=0, max_epochs=0, monitor=cfg.train.monitor, best_epoch=0,
                  best=metrics.get(cfg.train.monitor), stop_reason="closed_form", run_dir=str(run_dir))
    results = evaluate_run(run_dir, recipe, cfg, splits=splits, log=log, device=fabric.device)
    status.update(state="finished")
    return results


def load_run_task(run_dir: Path, recipe, info: dict, which: str = "best_model.pt", device: torch.device | str = "cpu") -> Task:
    """The task a run saved, rebuilt from the config stored with its weights (a phase may change model keys)."""
    weights = load_checkpoint(run_dir / which, recipe.name)
    cfg = recipe.config.model_validate(weights["config"])
    task = recipe.build_task(cfg, weights.get("data_info") or info)
    load_weights(task, weights["state_dict"], run_dir / which)
    return task.to(device).eval()


def evaluate_run(run_dir: Path, recipe, cfg: RunConfig, *, splits: Splits | None = None, log: RunLog | None = None,
                 options: dict[str, Any] | None = None, device: torch.device | str | None = None) -> dict[str, Any]:
    """Evaluate a run's best model on the held-out split: test_results.json, then report/.
    `options` (a recipe's own evaluate flags, e.g. a user's map) writes report/<name>.json instead."""
    if cfg.phases:
        from kiln.engine.phases import evaluate_phased_run

        return evaluate_phased_run(run_dir, recipe, cfg, options=options, device=device)
    device = device or accelerator_for(cfg.train.device)
    log = log or RunLog([run_dir / "train.log"])
    if splits is None:
        recipe.prepare_data(cfg, log)
        splits = recipe.load_data(cfg, log)
    task = load_run_task(run_dir, recipe, splits.info, device=device)
    with torch.no_grad():
        evaluation = recipe.evaluate(task, splits, cfg, options or {})
    results = evaluation.results
    (run_dir / "report").mkdir(exist_ok=True)
    if options:
        write_json(run_dir / "report" / f"{results.get('name', 'evaluation')}.json", results)
    else:
        write_json(run_dir / "test_results.json", results)
        recipe.report(run_dir, task, splits, cfg, results, evaluation.outputs)
    return results
