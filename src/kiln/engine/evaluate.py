"""After training: calibrate the saved weights on validation, then evaluate the best model on the held-out split.

    calibrate_saved()    Task.calibrate on best_model.pt and final_model.pt (validation split only)
    load_run_task()      the task a run saved, rebuilt from the config stored with its weights
    evaluate_run()       test_results.json and report/ (a phased run: its last phase, then the run's copy)
    evaluate_on_data()   another dataset directory of the recipe: test_results_<name>.json and report_<name>/

`kiln evaluate` calls evaluate_run on a finished run (evaluate_on_data with --data); `kiln export`,
`kiln printer compensate` and the printer's streaming load a run's task through load_run_task.

A recipe may define `data_mismatch(cfg, trained_info, info) -> str | None` in its evaluation module: given the
trained run's config and dataset description and another dataset's, what keeps the model from that data (a
model tied to its grid size or its graph's nodes), or None. Without one, a shape error in the model is one line.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from kiln.config import RunConfig, dump_config
from kiln.engine.checkpoint import load_checkpoint, load_weights
from kiln.engine.devices import accelerator_for
from kiln.engine.files import check_new_directory, fsync_tree, save_atomic, write_failed, write_json, write_text
from kiln.engine.loop import one_line
from kiln.engine.phases import finish_run
from kiln.engine.report import write_headline, write_summary
from kiln.engine.rundir import RunLog
from kiln.engine.runs import headline_of
from kiln.engine.task import Evaluation, Splits, Task
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
    return saved_task(recipe, cfg, weights, weights.get("data_info") or info, run_dir / which).to(device).eval()


def saved_task(recipe, cfg: RunConfig, weights: dict[str, Any], info: dict, source: Path) -> Task:
    task = recipe.build_task(cfg, info)
    load_weights(task, weights["state_dict"], source)
    return task


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
        write_report(recipe, run_dir, task, splits, cfg, evaluation)
    return results


def write_report(recipe, run_dir: Path, task: Task, splits: Splits, cfg: RunConfig, evaluation: Evaluation) -> None:
    """run_dir/report: the headline first (the recipe's report.md shows it beside the baseline), then the recipe's
    report; a recipe without a report of its own still gets report.md with its metrics."""
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    results = evaluation.results
    write_headline(report_dir, headline_of(recipe, results))
    recipe.report(run_dir, task, splits, cfg, results, evaluation.outputs)
    if not (report_dir / "report.md").is_file():
        write_summary(report_dir, f"{cfg.recipe} run {cfg.name}",
                      {k: v for k, v in results.items() if not isinstance(v, (dict, list))}, {})


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


def evaluate_on_data(run_dir: Path, recipe, cfg: RunConfig, data_dir: Path, name: str | None = None,
                     device: torch.device | str | None = None) -> tuple[dict[str, Any], str]:
    """`kiln evaluate RUN --data DIR`: the run's best model on another dataset directory of its recipe, written to
    RUN/test_results_<name>.json and RUN/report_<name>/ (name: DIR's basename), never over anything. The dataset
    must exist (it is never generated); the model is the trained one, built for the data it was trained on.
    Returns the results and the name."""
    data_dir = Path(data_dir)
    name = name or data_dir.resolve().name
    results_path, report_out = beside(run_dir, name)
    if not data_dir.is_dir():
        raise KilnError(f"--data '{data_dir}' is not a directory; kiln evaluate never makes data: make it with "
                        f"{recipe.data_command(data_dir)}")
    if not (run_dir / "best_model.pt").is_file():
        raise KilnError(f"'{run_dir}' has no best_model.pt (it has not finished training); resume it with: kiln train --resume {run_dir}")
    eval_cfg = on_data(cfg.phase_configs()[-1][2] if cfg.phases else cfg, data_dir)
    splits = read_other_data(recipe, eval_cfg, data_dir)
    weights = load_checkpoint(run_dir / "best_model.pt", recipe.name)
    trained_cfg, trained_info = recipe.config.model_validate(weights["config"]), weights.get("data_info") or {}
    mismatch = recipe_function(recipe, "evaluation", "data_mismatch")
    reason = mismatch(trained_cfg, trained_info, splits.info) if mismatch is not None else None
    if reason:
        raise KilnError(f"--data '{data_dir}' does not fit the model of '{run_dir}': {reason}")
    device = device or accelerator_for(cfg.train.device)
    task = saved_task(recipe, trained_cfg, weights, trained_info, run_dir / "best_model.pt").to(device).eval()
    try:
        with torch.no_grad():
            evaluation = recipe.evaluate(task, splits, eval_cfg, {})
    except (RuntimeError, ValueError, IndexError) as err:
        if isinstance(err, torch.OutOfMemoryError):
            raise
        raise KilnError(f"--data '{data_dir}' does not fit the model of '{run_dir}': the model failed on it "
                        f"({type(err).__name__}: {one_line(err)}); its data differs in shape from the data it was trained on") from None
    write_report_beside(recipe, run_dir, report_out, task, splits, eval_cfg, evaluation)
    write_json(results_path, {**evaluation.results, "data_dir": str(data_dir)})
    return evaluation.results, name


def beside(run_dir: Path, name: str) -> tuple[Path, Path]:
    """test_results_<name>.json and report_<name>/ in the run; refused if either exists (nothing is overwritten)."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise KilnError(f"evaluation name '{name}' is not a plain file name; pass --name with letters, digits, '.', '_' or '-'")
    results_path, report_out = run_dir / f"test_results_{name}.json", run_dir / f"report_{name}"
    for path in (results_path, report_out):
        if path.exists():
            raise KilnError(f"'{path}' already exists and kiln evaluate --data never overwrites; pass --name for another name")
    check_new_directory(report_out, "report dir")
    return results_path, report_out


def on_data(cfg: RunConfig, data_dir: Path) -> RunConfig:
    """The config with data.dir replaced and no generator (another dataset is read, never made)."""
    data = cfg.data.model_dump(mode="json")
    if "dir" not in data:
        raise KilnError(f"{cfg.recipe} runs read no data directory (no data.dir), so kiln evaluate --data has nothing to replace")
    data.update(dir=str(data_dir), **({"generate": None} if "generate" in data else {}))
    return type(cfg).model_validate({**cfg.model_dump(mode="json"), "data": data})


def read_other_data(recipe, cfg: RunConfig, data_dir: Path) -> Splits:
    """The recipe's reader on the other directory; whatever it trips on is one line naming the directory."""
    try:
        return recipe.load_data(cfg, RunLog())
    except KilnError:
        raise
    except Exception as err:  # a directory of another recipe or of the user's own making: readers raise many types
        raise KilnError(f"--data '{data_dir}' could not be read as a {recipe.name} dataset ({type(err).__name__}: "
                        f"{one_line(err)}); make one with: {recipe.data_command()}") from None


def recipe_function(recipe, module: str, name: str) -> Callable[..., Any] | None:
    """A function the recipe's package may define (e.g. evaluation.data_mismatch), or None where it does not."""
    path = f"{recipe.package or 'kiln.recipes.' + recipe.name}.{module}"
    try:
        return getattr(importlib.import_module(path), name, None)
    except ModuleNotFoundError as err:
        if err.name is not None and path.startswith(err.name):
            return None
        raise


def write_report_beside(recipe, run_dir: Path, out: Path, task: Task, splits: Splits, cfg: RunConfig,
                        evaluation: Evaluation) -> None:
    """report_<name>/ whole or not at all: the recipe's report written in a temporary run directory (with the
    evaluated config, so report.md shows data.dir), which is then renamed into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=run_dir))
    try:
        write_text(staging / "config.yaml", dump_config(cfg))
        write_report(recipe, staging, task, splits, cfg, evaluation)
        os.replace(staging / "config.yaml", staging / "report" / "config.yaml")
        fsync_tree(staging / "report")
        os.replace(staging / "report", out)
    except OSError as err:
        raise write_failed(out, err) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
