"""After training: calibrate the saved weights on validation, then evaluate the best model on the held-out split.

    calibrate_saved()    Task.calibrate on best_model.pt and final_model.pt (validation split only)
    load_run_task()      the task a run saved, rebuilt from the config stored with its weights
    evaluate_run()       test_results.json and report/ (a phased run: its last phase, then the run's copy)

`kiln evaluate` calls evaluate_run on a finished run; `kiln export`, `kiln printer compensate` and the
printer's streaming load a run's task through load_run_task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln.config import RunConfig
from kiln.engine.checkpoint import load_checkpoint, load_weights
from kiln.engine.devices import accelerator_for
from kiln.engine.files import save_atomic, write_json
from kiln.engine.phases import finish_run
from kiln.engine.rundir import RunLog
from kiln.engine.task import Splits, Task
from kiln.errors import KilnError


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
        payload = load_checkpoint(path)
        task.load_state_dict(payload["state_dict"])
        calibrate(task, val)
        save_atomic({**payload, "state_dict": task.state_dict()}, path)


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
        return evaluate_phased_run(run_dir, recipe, cfg, options=options, device=device)
    device = device or accelerator_for(cfg.train.device)
    log = log or RunLog([run_dir / "train.log"])
    if splits is None:
        if not Path(cfg.data.dir).exists():
            log(f"The run's data.dir '{cfg.data.dir}' is gone; it is made again from the run's data: settings"
                + (" (data.generate, the same seed as at training)" if getattr(cfg.data, "generate", None) is not None else ""))
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


def evaluate_phased_run(run_dir: Path, recipe, cfg: RunConfig, *, options: dict[str, Any] | None, device) -> dict[str, Any]:
    """`kiln evaluate` on a multi-phase run evaluates its last phase and refreshes the run's copy."""
    count = len(cfg.phases)
    last = run_dir / f"phase_{count}"
    if not (last / "best_model.pt").is_file():
        raise KilnError(f"'{run_dir}' has not finished phase {count} of {count} yet (no {last / 'best_model.pt'}); "
                        f"resume it with: kiln train --resume {run_dir}")
    results = evaluate_run(last, recipe, cfg.phase_configs()[-1][2], options=options, device=device)
    if not options:
        finish_run(run_dir, count, cfg)
    return results
