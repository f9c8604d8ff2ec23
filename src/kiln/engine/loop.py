"""The one training loop: every recipe trains through `Run`.

Lightning Fabric supplies devices, precision and DDP; the loop itself is plain PyTorch, because
Lightning's Trainer costs ~0.5 ms per step in hooks that small CPU models cannot hide
(bench/engine_overhead.py measures what this loop costs instead). It reads top to bottom:

    Run.train()          epochs until max_epochs / max_steps / a callback stops it; Ctrl-C saves and stops
    Run.train_epoch()    micro-batches; an optimizer update every accumulate_grad_batches
    Run.update()         clip, check for non-finite values, step (one host sync per update)
    Run.end_period()     validate, record the history row, console line (every epoch or every N steps)

Everything else a run does on the way (checkpoints, early stopping, EMA, health warnings, gradient
statistics, loggers and media, sweep pruning) is a callback (callbacks.py) with the hooks it needs:
`on_start`, `on_update` after each optimizer step, `on_validation` after each validation point,
`on_end` when training stops. `LoopState` is where a run stands: the checkpoint payload and what
status.json shows.
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

from kiln.config import RunConfig
from kiln.engine.batches import make_batches
from kiln.engine.callbacks import Callback, default_callbacks
from kiln.engine.checkpoint import FORMAT, link_aliases, rng_state, set_rng_state
from kiln.engine.files import save_atomic
from kiln.engine.rundir import RunLog, Status, is_better, stdout_is_terminal, write_history
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
        return cls(epoch=saved["epoch"], step=saved["global_step"], batch_in_epoch=saved["batch_in_epoch"],
                   history=saved["history"], best=dict(saved["best"]), count=saved["partial_count"],
                   sums={k: torch.tensor(v) for k, v in saved["partial_sums"].items()})

    def status(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "best": self.best["value"], "best_epoch": self.best["epoch"]}

    def judge(self, value: float, mode: str, epoch: float) -> bool:
        """Record a validation's monitored value; True if it is the best so far."""
        if is_better(value, self.best["value"], mode):
            self.best.update(value=value, epoch=epoch, step=self.step, bad_evals=0)
            return True
        self.best["bad_evals"] += 1
        return False


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


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    progress.start()
    return progress


class Run:
    """One training run (or one phase of a multi-phase run) in one run directory.

    `callbacks` default to the config's (callbacks.default_callbacks); pass [] for a loop that only trains
    (the LR range test). `extra_callbacks` run after them (a sweep's pruning). A task without trainable
    parameters gets no optimizer: it can only be validated."""

    def __init__(self, fabric, cfg: RunConfig, task: Task, splits: Splits, run_dir: Path, log: RunLog, status: Status,
                 precision: str, batch_seed: int, callbacks: list[Callback] | None = None, extra_callbacks: tuple[Callback, ...] = ()):
        t = cfg.train
        self.fabric, self.cfg, self.t, self.splits, self.run_dir, self.log, self.status = fabric, cfg, t, splits, run_dir, log, status
        self.precision, self.zero = precision, fabric.is_global_zero
        shard = {"rank": fabric.global_rank, "world": fabric.world_size, "num_workers": t.num_workers,
                 "pin_memory": fabric.device.type == "cuda"}
        self.train_batches = make_batches(splits.train, t.batch_size, shuffle=True, seed=batch_seed, even=True, **shard)
        self.val_batches = make_batches(splits.val, t.eval_batch_size, shuffle=False, even=False, **shard)
        self.test_batches = make_batches(splits.test, t.eval_batch_size, shuffle=False, even=False, **shard) if t.log_test_metrics else None
        self.batches_per_epoch = len(self.train_batches)
        self.steps_per_epoch = -(-self.batches_per_epoch // t.accumulate_grad_batches)

        self.task = task  # the plain module: state dicts, hooks
        self.evaluated = task  # the weights validated and exported (a callback may swap in an average, e.g. EMA)
        if any(p.requires_grad for p in task.parameters()):
            optimizer = build_optimizer(task, t)
            self.scheduler = build_scheduler(optimizer, t, self.steps_per_epoch)
            self.model, self.optimizer = fabric.setup(task, optimizer)  # wrapped: precision, device, DDP
        else:  # fitted in closed form (Task.fit_data): nothing to train
            self.model, self.optimizer, self.scheduler = fabric.setup_module(task), None, None

        self.state = LoopState()
        self.signals: dict[str, bool] = {"stop": False}
        self.stop_reason: str | None = None  # set by a callback that ends training early (e.g. "early_stopping")
        self.stop_requested = False
        self.progress = None
        self.window: list[Tensor] = []  # losses of the micro-batches in the current accumulation window
        self.period_started = self.train_time = 0.0
        self.first_val_batch: dict[str, Tensor] | None = None
        self.callbacks = (default_callbacks(self) if callbacks is None else list(callbacks)) + list(extra_callbacks)
        self.compiling = self.compile(t.compile) if self.optimizer is not None else None

    def compile(self, setting) -> dict[str, Any] | None:
        """train.compile: torch.compile the task's training step (an attribute of the instance, so the module, its
        state_dict keys, checkpoints, EMA, export and resume are untouched; validation stays eager). The first step,
        which compiles, is timed and reported (first_compiled_step)."""
        if not setting:
            return None
        options = {"backend": "inductor", "mode": "default", "fullgraph": False, "dynamic": None,
                   **({} if isinstance(setting, bool) else setting.model_dump())}
        mode = options["mode"] if options["mode"] != "default" and options["backend"] == "inductor" else None
        self.task.training_step = torch.compile(self.task.training_step, backend=options["backend"], mode=mode,
                                                fullgraph=options["fullgraph"], dynamic=options["dynamic"])
        return {"options": options, "seconds": None}

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ start, restore, checkpoints

    def init_weights(self, init_from: str | None) -> None:
        """Start from the weights of another run (--init-from), checked against this model."""
        from kiln.engine.checkpoint import load_checkpoint, load_weights

        if init_from:
            source = load_checkpoint(init_from, self.cfg.recipe)
            load_weights(self.task, source.get("state_dict", source.get("model")), init_from)
            self.log(f"Initialised weights from {init_from}")

    def start(self) -> None:
        """A fresh run's first line, and its callbacks' on_start."""
        params = sum(p.numel() for p in self.task.parameters())
        trained = sum(p.numel() for p in self.task.parameters() if p.requires_grad)
        frozen = f" ({params - trained:,} frozen)" if trained < params else ""
        processes = f" x {self.fabric.world_size} processes" if self.fabric.world_size > 1 else ""
        self.log(f"kiln {self.cfg.recipe} '{self.cfg.name}': {params:,} parameters{frozen}, {self.train_batches.size:,} train samples, "
                 f"device {self.fabric.device}{processes}, precision {self.precision}, run dir {self.run_dir}")
        self.call("on_start")

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint (--resume): weights, optimizer, schedule, random state, position, callbacks."""
        self.task.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        self.state = LoopState.from_payload(saved)
        for callback in self.callbacks:
            callback.load_state_dict(saved)
        s = self.state
        self.log(f"Resuming {self.run_dir} at epoch {s.epoch + 1}" + (f", batch {s.batch_in_epoch + 1}" if s.batch_in_epoch else ""))

    @torch.no_grad()
    def check_monitor(self) -> None:
        """train.monitor must be a metric the validation step logs: checked on one validation batch before training
        (not after the first epoch), without touching the weights, buffers or random state. A train_* monitor is
        left to the first validation, since the training step may count its calls."""
        monitor = self.t.monitor
        if not monitor.startswith("val_"):
            return
        batch = next(iter(self.val_batches.epoch()), None)
        if batch is None:
            raise KilnError("the validation split is empty; regenerate the dataset with more validation samples")
        with torch.random.fork_rng(devices=[self.fabric.device] if self.fabric.device.type == "cuda" else []):
            self.evaluated.eval()
            with self.fabric.autocast():
                out = self.evaluated(self.fabric.to_device(batch), "val")
            self.model.train()
        names = self.task.finish_metrics({f"{split}_{k}": float(v.float().mean()) for split in ("train", "val") for k, v in out.items()})
        if monitor not in names:
            choices = ", ".join(k for k in names if k.startswith("val_"))
            raise KilnError(f"train.monitor '{monitor}' is not a metric of this {self.cfg.recipe} task; choose one of: {choices}")

    def save_checkpoint(self, name: str) -> None:
        if not self.zero:
            return
        save_atomic({
            "kiln_format": FORMAT, "kind": "training-state", "recipe": self.cfg.recipe, "config": self.cfg.model_dump(mode="json"),
            "data_info": self.splits.info, "model": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
            **{key: value for callback in self.callbacks for key, value in callback.state_dict().items()},
            **self.state.payload(),
        }, self.run_dir / "checkpoints" / name)

    def export(self, name: str, metrics: dict[str, Any]) -> None:
        if self.zero:
            export_weights(self.run_dir / name, self.evaluated, self.cfg, self.splits.info, self.state.epoch, metrics)
            link_aliases(self.run_dir, self.task.file_aliases, name)

    # ------------------------------------------------------------------ the loop

    def done(self) -> bool:
        s = self.state
        return self.stop_reason is not None or s.epoch >= self.t.max_epochs or bool(self.t.max_steps and s.step >= self.t.max_steps)

    def train(self) -> str:
        """Train to the end; returns "finished" or "interrupted" (state saved in checkpoints/last.ckpt)."""
        s = self.state
        self.status.update(state="running", max_epochs=self.t.max_epochs, max_steps=self.t.max_steps, monitor=self.t.monitor,
                           run_dir=str(self.run_dir), **s.status())
        if self.zero and s.history:  # resumed: history.csv may hold rows written after the checkpoint
            write_history(self.run_dir, s.history, self.task.history_file)
        self.progress = make_progress() if self.zero and stdout_is_terminal() else None
        outcome = "failed"
        try:
            with stop_on_signals() as self.signals:
                self.period_started = time.perf_counter()
                while not self.done():
                    self.train_epoch()
                if not s.history or s.history[-1].get("step") != s.step:  # steps trained since the last validation
                    self.end_period()
            outcome = "finished"
        except Interrupted:
            outcome = "interrupted"
            self.save_checkpoint("last.ckpt")
            self.status.update(state="interrupted", **s.status())
            self.log(f"Interrupted at epoch {s.epoch + 1}, step {s.step}: saved checkpoints/last.ckpt. "
                     f"Resume with: kiln train --resume {self.run_dir}")
        except KeyboardInterrupt:
            outcome = "interrupted"
            self.status.update(state="interrupted", **s.status())
            self.log(f"Stopped at once by a second interrupt; resume from the last saved point with: kiln train --resume {self.run_dir}")
        except BaseException as err:
            self.status.update(state="failed", error=one_line(err))
            raise
        finally:
            if self.progress is not None:
                self.progress.stop()
            self.call("on_end", outcome)
        return outcome

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
            if self.stop_requested:
                raise Interrupted
            if self.done():
                break
            self.status.beat(**s.status())
        if bar is not None:
            self.progress.remove_task(bar)
        self.train_time += time.perf_counter() - started
        if s.batch_in_epoch == self.batches_per_epoch:  # a whole epoch (not cut short by max_steps or a callback)
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            if not self.t.val_every_n_steps:
                self.end_period()
                if self.agree_to_stop():  # a Ctrl-C during validation stops here, not one step into the next epoch
                    raise Interrupted

    def forward_backward(self, batch: dict[str, Tensor], window: int, is_update: bool) -> None:
        s = self.state
        with self.fabric.no_backward_sync(self.model, enabled=not is_update):
            if self.compiling is not None and self.compiling["seconds"] is None:
                out = self.first_compiled_step(batch, window)
            else:
                out = self.model(batch, "train")  # Fabric's wrapper applies the precision's autocast
                self.fabric.backward(out["loss"] / window)
        n = batch_size_of(batch)
        accumulate(s.sums, out, n)
        s.count += n
        self.window.append(out["loss"].detach())

    def first_compiled_step(self, batch: dict[str, Tensor], window: int) -> dict[str, Tensor]:
        """The first compiled step: compiles (timed and reported). A model that does not compile is said in one line,
        and the run trains eagerly from this step on."""
        started = time.perf_counter()
        try:
            out = self.model(batch, "train")
            self.fabric.backward(out["loss"] / window)
        except Exception as err:  # dynamo and inductor raise many types
            del self.task.training_step  # the class's own, eager step again
            self.compiling = None
            self.task.zero_grad(set_to_none=True)  # the first micro-batch of the run: nothing else to lose
            self.log(f"train.compile: this {self.cfg.recipe} model does not compile ({one_line(err)[:200]}); training eagerly")
            out = self.model(batch, "train")
            self.fabric.backward(out["loss"] / window)
            return out
        self.compiling["seconds"] = time.perf_counter() - started
        options = self.compiling["options"]
        self.log(f"train.compile: compiled the training step in {self.compiling['seconds']:.1f}s "
                 f"({options['backend']}, mode {options['mode']})")
        return out

    def update(self) -> float:
        """One optimizer update; returns the window's train loss. Its single host sync checks the loss and gradient
        norm for non-finite values and agrees with every rank on whether to stop; nothing non-finite reaches the weights.
        Callbacks' on_update runs after the step, while the gradients are still there."""
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
        self.optimizer.step()
        self.scheduler.step()
        s.step += 1
        self.stop_requested = bool(stop)
        self.call("on_update", loss_value, norm_value)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop (a collective under DDP, so every rank decides alike)."""
        stop = torch.tensor(float(self.signals["stop"]), device=self.fabric.device)
        return bool((self.fabric.all_reduce(stop, reduce_op="sum") if self.fabric.world_size > 1 else stop).item())

    def learning_rates(self) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        groups = self.optimizer.param_groups
        return {"lr": groups[0]["lr"], **{f"lr_{g['name']}": g["lr"] for g in groups[1:]}}

    def ends_period(self) -> bool:
        """Whether the update just taken ends a validation period (checked by callbacks in on_update)."""
        s, t = self.state, self.t
        if t.val_every_n_steps:
            return s.step % t.val_every_n_steps == 0
        return s.batch_in_epoch == self.batches_per_epoch

    # ------------------------------------------------------------------ validation points

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics of the evaluated weights over the validation split (and the test split with train.log_test_metrics;
        all ranks). Keeps the first validation batch for the media callback."""
        model = self.model if self.evaluated is self.task else self.evaluated  # an average (EMA) runs unwrapped
        model.eval()
        metrics = {}
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
                if prefix == "val" and self.first_val_batch is None:
                    self.first_val_batch = batch
            metrics.update(reduced_means(self.fabric, sums, count, prefix))
        self.model.train()
        return metrics

    def end_period(self) -> None:
        """A validation point (every epoch, or every val_every_n_steps): metrics, history row, callbacks, console."""
        s, t = self.state, self.t
        self.first_val_batch = None
        metrics = reduced_means(self.fabric, s.sums, s.count, "train")
        metrics = self.task.finish_metrics({**metrics, **self.validate()})
        s.sums, s.count = {}, 0
        if t.monitor not in metrics:
            raise KilnError(f"train.monitor '{t.monitor}' is not a logged metric; choose one of: {', '.join(metrics)}")
        epoch = s.epoch if not s.batch_in_epoch else round(s.epoch + s.batch_in_epoch / self.batches_per_epoch, 4)
        row = {"epoch": epoch, "step": s.step, **metrics, **self.learning_rates(), "train_time_s": self.train_time,
               "epoch_time_s": time.perf_counter() - self.period_started}
        self.train_time, self.period_started = 0.0, time.perf_counter()
        s.history.append(row)
        improved = s.judge(metrics[t.monitor], t.mode, epoch)
        line = self.task.epoch_line(max(1, math.ceil(epoch)), t.max_epochs, metrics, improved)
        self.log(f"Step {s.step}: {line}" if t.val_every_n_steps else line)
        for warning in self.task.epoch_warnings(metrics):
            self.log(f"Warning: {warning}")
        self.call("on_validation", row, improved)
        if self.zero:
            write_history(self.run_dir, s.history, self.task.history_file)
        self.status.update(**s.status())

    def finish(self) -> None:
        """final_model.pt and status "evaluating": training is over (the caller evaluates)."""
        s = self.state
        self.export("final_model.pt", s.history[-1] if s.history else {})
        reason = self.stop_reason or ("max_steps" if self.t.max_steps and s.step >= self.t.max_steps else "max_epochs")
        self.status.update(state="evaluating", stop_reason=reason, **s.status())
