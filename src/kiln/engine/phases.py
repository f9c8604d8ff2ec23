"""Multi-phase runs: a config's `phases:` list run in order, each a whole run in run_dir/phase_K.

A phase is the base config with its overrides (lr, schedule, epochs, loss weights, recipe keys),
validated whole before anything runs. Phase K starts from phase K-1's best weights (or its last,
`init: last`) with a fresh optimizer and scheduler; phase 1 starts from --init-from when given.
The run directory itself keeps config.yaml (with phases), train.log and status.json (phase K/N) for
the whole run, history.csv/json over all phases (a `phase` column, epochs counted across phases), and,
once the last phase has finished, its best_model.pt, final_model.pt and test_results.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kiln.config import RunConfig, dump_config
from kiln.engine.report import plot_learning_curves, write_summary
from kiln.engine.rundir import RunLog, Status, write_history, write_json
from kiln.errors import KilnError

WEIGHTS = {"best": "best_model.pt", "last": "final_model.pt"}


def phase_state(phase_dir: Path) -> str | None:
    try:
        return json.loads((phase_dir / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def fit_phases(fabric, cfg: RunConfig, recipe, run_dir: Path, log: RunLog, precision: str, *, resume: bool,
               init_from: str | None) -> dict[str, Any]:
    from kiln.engine.trainer import fit_one, load_splits

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
            (phase_dir / "config.yaml").write_text(dump_config(phase_cfg))
        key = json.dumps([phase_cfg.data.model_dump(mode="json"), phase_cfg.model.model_dump(mode="json")])
        if key not in splits_by_data:  # phases that change only train: keys share one load
            splits_by_data[key] = load_splits(fabric, recipe, phase_cfg, log)
        phase_log = RunLog([phase_dir / "train.log", run_dir / "train.log"] if zero else [], quiet=not zero)
        status = Status([phase_dir / "status.json", run_dir / "status.json"] if zero else [],
                        phase=f"{k}/{len(phases)}", phase_name=name)
        results = fit_one(fabric, phase_cfg, recipe, splits_by_data[key], phase_dir, phase_log, status, precision,
                          resume=resume_phase, init_from=None if resume_phase else start_from,
                          batch_seed=phase_cfg.train.seed + 7919 * (k - 1))  # each phase its own shuffles
        if zero:
            merge_histories(run_dir, len(phases))
        if results.get("state") == "interrupted":
            return results
    if not zero:
        return results
    finish_run(run_dir, len(phases), cfg)
    log(f"All {len(phases)} phases finished; the run's best_model.pt and test_results.json are phase {len(phases)}'s")
    return results


def merge_histories(run_dir: Path, count: int) -> None:
    """The run's history.csv/json: every phase's rows, with `phase`, and epochs counted across phases."""
    rows, offset = [], 0
    for k in range(1, count + 1):
        path = run_dir / f"phase_{k}" / "history.json"
        if not path.is_file():
            break
        columns = json.loads(path.read_text())
        phase_rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        rows += [{"phase": k, **row, "epoch": offset + row["epoch"], "phase_epoch": row["epoch"]} for row in phase_rows]
        offset += phase_rows[-1]["epoch"] if phase_rows else 0
    write_history(run_dir, rows)


def finish_run(run_dir: Path, count: int, cfg: RunConfig) -> None:
    """The last phase's weights and results become the run's; report/ gets the learning curves of all phases."""
    last = run_dir / f"phase_{count}"
    for name in ("best_model.pt", "final_model.pt", "test_results.json"):
        shutil.copyfile(last / name, run_dir / f"{name}.tmp")
        (run_dir / f"{name}.tmp").replace(run_dir / name)
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    figures = {"Learning curves over all phases": "learning_curves.png"} if plot_learning_curves(run_dir, report / "learning_curves.png") else {}
    figures.update({f"Phase {k} report": f"../phase_{k}/report/report.md" for k in range(1, count + 1)})
    results = json.loads((run_dir / "test_results.json").read_text())
    write_summary(report, f"{cfg.recipe} run {cfg.name}: {count} phases (test results of phase {count})",
                  {k: v for k, v in results.items() if not isinstance(v, (dict, list))}, figures)
    status = json.loads((last / "status.json").read_text())
    write_json(run_dir / "status.json", {**status, "phase": f"{count}/{count}", "state": "finished"})


def evaluate_phased_run(run_dir: Path, recipe, cfg: RunConfig, *, options: dict[str, Any] | None, device) -> dict[str, Any]:
    """`kiln evaluate` on a multi-phase run evaluates its last phase and refreshes the run's copy."""
    from kiln.engine.trainer import evaluate_run

    count = len(cfg.phases)
    last = run_dir / f"phase_{count}"
    if not (last / "best_model.pt").is_file():
        raise KilnError(f"'{run_dir}' has not finished phase {count} of {count} yet (no {last / 'best_model.pt'}); "
                        f"resume it with: kiln train --resume {run_dir}")
    results = evaluate_run(last, recipe, cfg.phase_configs()[-1][2], options=options, device=device)
    if not options:
        finish_run(run_dir, count, cfg)
    return results
