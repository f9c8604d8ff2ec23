"""`kiln train`: one run, or its phases, from a config into a run directory.

    fit()              precision, processes, run record; one run or its phases
    fit_phases()       a config's `phases:` in order, each a whole run in run_dir/phase_K (phases.py keeps their files)
    fit_one()          build the task; restore, or start from given weights; train (loop.py); evaluate (evaluate.py)
    fit_closed_form()  a task without trainable parameters: validate once, save, evaluate

A phase is the base config with its overrides (lr, schedule, epochs, loss weights, recipe keys),
validated whole before anything runs. Phase K starts from phase K-1's best weights (or its last,
`init: last`) with a fresh optimizer and scheduler; phase 1 starts from --init-from when given.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from kiln.config import RunConfig, dump_config
from kiln.engine.checkpoint import load_checkpoint
from kiln.engine.devices import (AUTO_PRECISION_VARIABLE, BF16_MIN_GAIN, accelerator_for, is_worker_process, launched_by_torchrun,
                                 make_fabric, process_layout, resolve_precision, seed_everything, set_threads, time_precisions)
from kiln.engine.evaluate import calibrate, calibrate_saved, evaluate_run
from kiln.engine.files import write_failed, write_text
from kiln.engine.callbacks import Callback
from kiln.engine.loop import Run, one_line
from kiln.engine.phases import WEIGHTS, finish_run, merge_histories, phase_state
from kiln.engine.rundir import (RunLock, RunLog, Status, check_run_dir, clear_run_dir, invocation, write_history,
                               write_run_record)
from kiln.engine.task import Splits
from kiln.errors import KilnError


class RunStart:
    """A run directory from the first check to the first write (rank 0): the lock is taken at once, files are
    written only once config, data, task and checkpoint have all passed (`ready`), so a start that fails on
    bad input leaves the directory as it was (or no directory at all), and --overwrite deletes the old run only
    when the new one is ready to train."""

    def __init__(self, run_dir: Path, cfg: RunConfig, log: RunLog, *, resume: bool, overwrite: bool, init_from: str | None):
        self.run_dir, self.cfg, self.log, self.init_from = run_dir, cfg, log, init_from
        self.record: tuple[str, str, int] | None = None  # precision, why, processes: set once Fabric has started
        self.resume, self.overwrite, self.is_ready = resume, overwrite, False
        check_run_dir(run_dir, overwrite or resume)  # a file in the way, not writable, not a run: before any write
        missing = [d for d in [run_dir, *run_dir.parents] if not d.exists()]
        self.created = missing  # the directories this start makes, innermost first
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failed(run_dir, err) from None
        self.lock = RunLock.acquire(run_dir)
        try:
            check_run_dir(run_dir, overwrite or resume)  # again, holding the lock: another start may have won the race
        except KilnError:
            self.end()
            raise

    def ready(self) -> None:
        """Everything checked: replace an old run (--overwrite), then write train.log, run.json and config.yaml."""
        if self.is_ready:
            return
        self.is_ready = True
        if self.overwrite and not self.resume:
            clear_run_dir(self.run_dir)
        self.log.attach(self.run_dir / "train.log")
        if (line := self.lock.taken_over()) is not None:
            self.log(line)
        write_run_record(self.run_dir, *self.record, init_from=self.init_from)
        write_text(self.run_dir / "config.yaml", dump_config(self.cfg))

    def end(self) -> None:
        """Release the lock; a start that never got ready removes the directory it made (nothing else is in it)."""
        self.lock.release()
        if not self.is_ready:
            for directory in self.created:
                with contextlib.suppress(OSError):
                    directory.rmdir()


def fit(cfg: RunConfig, recipe, run_dir: Path, *, resume: bool = False, init_from: str | None = None,
        overwrite: bool = False, callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (fresh or resumed), then evaluate the best model on the test split.

    Under DDP every process calls this; only rank 0 writes files. A config with `phases:` runs them in
    order, each in run_dir/phase_K. `callbacks` join every phase's loop after the config's own (callbacks.py).
    Nothing is written to run_dir before the config, the data and the task have passed their checks."""
    first = not is_worker_process()  # rank 0, before and after Fabric starts the others
    log = RunLog(quiet=not first, held=True)
    start = RunStart(run_dir, cfg, log, resume=resume, overwrite=overwrite, init_from=init_from) if first else None
    try:
        set_threads(cfg.train.threads, process_layout(cfg.train)["devices"])
        precision, why, splits = choose_precision(cfg, recipe, log, run_dir if resume else None)
        fabric = make_fabric(cfg.train, precision)
        run_dir = Path(fabric.broadcast(str(run_dir)))  # ranks started by torchrun may have made other default names
        zero = fabric.is_global_zero
        if start is not None:
            start.record = (precision, why, fabric.world_size)
        log(f"Precision: {precision} (" + (f"auto: {why})" if cfg.train.precision == "auto" else f"{why})"))
        ready = start.ready if zero else (lambda: None)
        if cfg.phases:
            results = fit_phases(fabric, cfg, recipe, run_dir, log, precision, resume=resume, init_from=init_from,
                                 ready=ready, callbacks=callbacks)
        else:
            splits = splits if splits is not None and fabric.world_size == 1 else load_splits(fabric, recipe, cfg, log)
            status = Status([run_dir / "status.json"] if zero else [])
            results = fit_one(fabric, cfg, recipe, splits, run_dir, log, status, precision, resume=resume, init_from=init_from,
                              ready=ready, callbacks=callbacks)
    finally:
        if start is not None:
            start.end()
    if fabric.world_size > 1:  # every rank waits for rank 0's evaluation, then all leave the process group together
        fabric.barrier()
        torch.distributed.destroy_process_group()
    return results


def choose_precision(cfg: RunConfig, recipe, log: RunLog, resumed: Path | None = None) -> tuple[str, str, Splits | None]:
    """(precision, why, the splits if they were loaded to decide). `auto` keeps its capability rule; where bf16 is a
    candidate, a run being `resumed` keeps the precision it trained in (where this machine offers it), and otherwise
    a few real training steps of this run's task in each candidate precision decide, on rank 0 before
    the other processes start (a Fabric launch hands them the choice in KILN_AUTO_PRECISION; torchrun's ranks start
    together and cannot agree before their process group exists, so they keep the rule)."""
    accelerator = accelerator_for(cfg.train.device)
    precision, why = resolve_precision(cfg.train.precision, accelerator)
    if cfg.train.precision != "auto" or "bf16" not in precision:
        return precision, why, None
    if is_worker_process() or launched_by_torchrun():
        handed = os.environ.get(AUTO_PRECISION_VARIABLE)
        if handed:
            precision, why = handed.split("|", 1)
        return precision, why, None
    before = invocation(resumed, -1).get("precision") if resumed is not None else None
    if before in (precision, "32"):  # a resumed run continues in the precision it trained in, so it ends exactly as one
        precision, why, splits = before, f"as this run trained before it stopped (run.json); {why}", None
    else:
        precision, why, splits = time_auto(cfg, recipe, log, precision, why, accelerator)
    os.environ[AUTO_PRECISION_VARIABLE] = f"{precision}|{why}"  # the processes a Fabric launch starts inherit it
    return precision, why, splits if not cfg.phases else None


def time_auto(cfg: RunConfig, recipe, log: RunLog, precision: str, why: str, accelerator: str) -> tuple[str, str, Splits]:
    """A few real training steps of this run's task in bf16 and in fp32; bf16 only when clearly faster."""
    phase_cfg = cfg.phase_configs()[0][2] if cfg.phases else cfg
    recipe.prepare_data(phase_cfg, log)
    splits = recipe.load_data(phase_cfg, log)
    with torch.random.fork_rng(devices=[]):
        timings = time_precisions(lambda: recipe.build_task(phase_cfg, splits.info), splits.train, phase_cfg.train,
                                  [precision, "32"], accelerator)
    if timings is not None:
        faster = timings[precision] <= (1 - BF16_MIN_GAIN) * timings["32"]
        near = not faster and timings[precision] < timings["32"]
        precision = precision if faster else "32"
        why = (f"{', '.join(f'{p} {ms:.1f} ms' for p, ms in timings.items())} per training step of this task, so {precision}"
               f"{f' (bf16 is faster by less than {BF16_MIN_GAIN:.0%})' if near else ''}; {why}")
    return precision, why, splits


def load_splits(fabric, recipe, cfg: RunConfig, log: RunLog) -> Splits:
    """Rank 0 makes the dataset if it is missing while the others wait; then every rank reads it."""
    if fabric.is_global_zero:
        recipe.prepare_data(cfg, log)
    fabric.barrier()
    return recipe.load_data(cfg, log)


def fit_phases(fabric, cfg: RunConfig, recipe, run_dir: Path, log: RunLog, precision: str, *, resume: bool,
               init_from: str | None, ready: Callable[[], None], callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    phases = cfg.phase_configs()
    zero = fabric.is_global_zero
    if resume and all(phase_state(run_dir / f"phase_{k}") == "finished" for k in range(1, len(phases) + 1)):
        raise KilnError(f"run '{run_dir}' already finished all {len(phases)} phases; add a phase to its config, or start a "
                        f"new run with --init-from {run_dir / 'best_model.pt'}")
    splits_by_data: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for k, (name, init, phase_cfg) in enumerate(phases, start=1):
        phase_dir = run_dir / f"phase_{k}"
        if resume and phase_state(phase_dir) == "finished":  # --overwrite trains every phase again
            results = json.loads((phase_dir / "test_results.json").read_text())
            continue
        resume_phase = resume and (phase_dir / "checkpoints" / "last.ckpt").is_file()
        start_from = init_from if k == 1 else str(run_dir / f"phase_{k - 1}" / WEIGHTS[init])
        log(f"Phase {k}/{len(phases)}: {name}" + ("" if resume_phase or not start_from else f", from {start_from}"))
        key = json.dumps([phase_cfg.data.model_dump(mode="json"), phase_cfg.model.model_dump(mode="json")])
        if key not in splits_by_data:  # phases that change only train: keys share one load
            splits_by_data[key] = load_splits(fabric, recipe, phase_cfg, log)
        phase_log = RunLog(quiet=not zero, held=True)
        status = Status([phase_dir / "status.json", run_dir / "status.json"] if zero else [],
                        phase=f"{k}/{len(phases)}", phase_name=name)

        def phase_ready(phase_dir=phase_dir, phase_cfg=phase_cfg, phase_log=phase_log) -> None:
            ready()
            if zero:
                phase_dir.mkdir(exist_ok=True)
                write_text(phase_dir / "config.yaml", dump_config(phase_cfg))
                phase_log.attach(phase_dir / "train.log", run_dir / "train.log")

        results = fit_one(fabric, phase_cfg, recipe, splits_by_data[key], phase_dir, phase_log, status, precision,
                          resume=resume_phase, init_from=None if resume_phase else start_from, ready=phase_ready,
                          batch_seed=phase_cfg.train.seed + 7919 * (k - 1), callbacks=callbacks)  # each phase its own shuffles
        if zero:
            merge_histories(run_dir, len(phases))
        if results.get("state") == "interrupted":
            return results
    if not zero:
        return results
    finish_run(run_dir, len(phases), cfg)
    log(f"All {len(phases)} phases finished; the run's best_model.pt and test_results.json are phase {len(phases)}'s")
    return results


def fit_one(fabric, cfg: RunConfig, recipe, splits: Splits, run_dir: Path, log: RunLog, status: Status, precision: str, *,
            resume: bool = False, init_from: str | None = None, batch_seed: int | None = None,
            ready: Callable[[], None] = lambda: None, callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    """Build the task, check it (monitor, --init-from or the checkpoint to resume), then `ready()` and train."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    task = recipe.build_task(cfg, splits.info)
    task.fit_data(splits.train)
    closed_form = not any(p.requires_grad for p in task.parameters())
    run = Run(fabric, cfg, task, splits, run_dir, log, status, precision, cfg.train.seed if batch_seed is None else batch_seed,
              callbacks=[] if closed_form else None, extra_callbacks=() if closed_form else callbacks)
    run.check_monitor()
    if closed_form:
        ready()
        return fit_closed_form(run, recipe)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():  # stopped (killed) before its first checkpoint: nothing to lose, start over
        if not (run_dir / "run.json").is_file():
            raise KilnError(f"cannot resume '{run_dir}': it holds no kiln run (no run.json); pass a run directory written by kiln train")
        resume, init_from = False, invocation(run_dir, 0).get("init_from")
        log(f"{run_dir} stopped before its first checkpoint: training it from the start")
    if resume:
        run.restore(load_checkpoint(last, cfg.recipe))
        if run.done():
            if (run_dir / "test_results.json").is_file():
                s = run.state
                raise KilnError(f"run '{run_dir}' already trained {s.epoch} of train.max_epochs={cfg.train.max_epochs} epochs "
                                f"({s.step} steps); pass e.g. train.max_epochs={s.epoch + 10} to continue")
            ready()
            log(f"Training of {run_dir} had finished but its evaluation had not: evaluating")
            return finish(run, recipe)
    else:
        run.init_weights(init_from)
    ready()
    if not resume:
        run.start()
    if run.train() == "interrupted":
        return {"state": "interrupted"}
    return finish(run, recipe)


def finish(run: Run, recipe) -> dict[str, Any]:
    """Training is over: final_model.pt, calibration on validation, the test evaluation (rank 0), status finished."""
    run.finish()
    run.fabric.barrier()
    if not run.zero:
        return {"state": "finished"}
    try:
        calibrate_saved([run.run_dir / "best_model.pt", run.run_dir / "final_model.pt"], run.evaluated, run.splits.val)
        results = evaluate_run(run.run_dir, recipe, run.cfg, splits=run.splits, log=run.log, device=run.fabric.device)
    except BaseException as err:  # training is safe in its files; `kiln train --resume` runs the evaluation again
        stopped = isinstance(err, KeyboardInterrupt)
        run.status.update(state="interrupted" if stopped else "failed", error=None if stopped else one_line(err),
                          note="training finished; the evaluation did not: kiln train --resume evaluates")
        raise
    run.status.update(state="finished", note=None)
    return results


def fit_closed_form(run: Run, recipe) -> dict[str, Any]:
    """A model without trainable parameters (fitted by Task.fit_data): validate once, save, evaluate."""
    cfg, splits, task = run.cfg, run.splits, run.task
    samples = run.train_batches.size
    run.log(f"kiln {cfg.recipe} '{cfg.name}': no trainable parameters; fitted in closed form on {samples:,} train samples")
    metrics = task.finish_metrics(run.validate())
    if not run.zero:
        return {"state": "finished"}
    write_history(run.run_dir, [{"epoch": 0, "step": 0, **metrics}], task.history_file)
    calibrate(task, splits.val)
    run.export("best_model.pt", metrics)
    run.export("final_model.pt", metrics)
    run.status.update(state="evaluating", epoch=0, step=0, max_epochs=0, monitor=cfg.train.monitor, best_epoch=0,
                      best=metrics.get(cfg.train.monitor), stop_reason="closed_form", run_dir=str(run.run_dir))
    results = evaluate_run(run.run_dir, recipe, cfg, splits=splits, log=run.log, device=run.fabric.device)
    run.status.update(state="finished")
    return results
