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

import json
from pathlib import Path
from typing import Any

import torch

from kiln.config import RunConfig, dump_config
from kiln.engine.checkpoint import load_checkpoint
from kiln.engine.devices import accelerator_for, make_fabric, process_layout, resolve_precision, seed_everything, set_threads
from kiln.engine.evaluate import calibrate, calibrate_saved, evaluate_run
from kiln.engine.files import write_text
from kiln.engine.callbacks import Callback
from kiln.engine.loop import Run
from kiln.engine.phases import WEIGHTS, finish_run, merge_histories, phase_state
from kiln.engine.rundir import RunLog, Status, write_history, write_run_record
from kiln.engine.task import Splits
from kiln.errors import KilnError


def fit(cfg: RunConfig, recipe, run_dir: Path, *, resume: bool = False, init_from: str | None = None,
        callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (fresh or resumed), then evaluate the best model on the test split.

    Under DDP every process calls this; only rank 0 writes files. A config with `phases:` runs them in
    order, each in run_dir/phase_K. `callbacks` join every phase's loop after the config's own (callbacks.py)."""
    precision, why = resolve_precision(cfg.train.precision, accelerator_for(cfg.train.device))
    fabric = make_fabric(cfg.train, precision)
    run_dir = Path(fabric.broadcast(str(run_dir)))  # ranks started by torchrun may have made other default names
    zero = fabric.is_global_zero
    log = RunLog([run_dir / "train.log"] if zero else [], quiet=not zero)
    log(f"Precision: {precision} (" + (f"auto: {why})" if cfg.train.precision == "auto" else f"{why})"))
    set_threads(cfg.train.threads, process_layout(cfg.train)["devices"])
    if zero:
        write_run_record(run_dir, precision, why, fabric.world_size)
        write_text(run_dir / "config.yaml", dump_config(cfg))
    if cfg.phases:
        results = fit_phases(fabric, cfg, recipe, run_dir, log, precision, resume=resume, init_from=init_from, callbacks=callbacks)
    else:
        splits = load_splits(fabric, recipe, cfg, log)
        status = Status([run_dir / "status.json"] if zero else [])
        results = fit_one(fabric, cfg, recipe, splits, run_dir, log, status, precision, resume=resume, init_from=init_from,
                          callbacks=callbacks)
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


def fit_phases(fabric, cfg: RunConfig, recipe, run_dir: Path, log: RunLog, precision: str, *, resume: bool,
               init_from: str | None, callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    phases = cfg.phase_configs()
    zero = fabric.is_global_zero
    if resume and all(phase_state(run_dir / f"phase_{k}") == "finished" for k in range(1, len(phases) + 1)):
        raise KilnError(f"run '{run_dir}' already finished all {len(phases)} phases; add a phase to its config, or start a "
                        f"new run with --init-from {run_dir / 'best_model.pt'}")
    splits_by_data: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for k, (name, init, phase_cfg) in enumerate(phases, start=1):
        phase_dir = run_dir / f"phase_{k}"
        if phase_state(phase_dir) == "finished":
            results = json.loads((phase_dir / "test_results.json").read_text())
            continue
        resume_phase = resume and (phase_dir / "checkpoints" / "last.ckpt").is_file()
        start_from = init_from if k == 1 else str(run_dir / f"phase_{k - 1}" / WEIGHTS[init])
        log(f"Phase {k}/{len(phases)}: {name}" + ("" if resume_phase or not start_from else f", from {start_from}"))
        if zero:
            phase_dir.mkdir(exist_ok=True)
            write_text(phase_dir / "config.yaml", dump_config(phase_cfg))
        key = json.dumps([phase_cfg.data.model_dump(mode="json"), phase_cfg.model.model_dump(mode="json")])
        if key not in splits_by_data:  # phases that change only train: keys share one load
            splits_by_data[key] = load_splits(fabric, recipe, phase_cfg, log)
        phase_log = RunLog([phase_dir / "train.log", run_dir / "train.log"] if zero else [], quiet=not zero)
        status = Status([phase_dir / "status.json", run_dir / "status.json"] if zero else [],
                        phase=f"{k}/{len(phases)}", phase_name=name)
        results = fit_one(fabric, phase_cfg, recipe, splits_by_data[key], phase_dir, phase_log, status, precision,
                          resume=resume_phase, init_from=None if resume_phase else start_from,
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
            callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    task = recipe.build_task(cfg, splits.info)
    task.fit_data(splits.train)
    closed_form = not any(p.requires_grad for p in task.parameters())
    run = Run(fabric, cfg, task, splits, run_dir, log, status, precision, cfg.train.seed if batch_seed is None else batch_seed,
              callbacks=[] if closed_form else None, extra_callbacks=() if closed_form else callbacks)
    if closed_form:
        return fit_closed_form(run, recipe)
    if resume:
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise KilnError(f"cannot resume '{run_dir}': no checkpoints/last.ckpt there; pass a run directory written by kiln train")
        run.restore(load_checkpoint(last, cfg.recipe))
    else:
        run.start(init_from)
    if run.train() == "interrupted":
        return {"state": "interrupted"}
    run.finish()
    fabric.barrier()
    if not fabric.is_global_zero:
        return {"state": "finished"}
    calibrate_saved([run_dir / "best_model.pt", run_dir / "final_model.pt"], run.evaluated, splits.val)
    results = evaluate_run(run_dir, recipe, cfg, splits=splits, log=log, device=fabric.device)
    status.update(state="finished")
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
