"""The files of a multi-phase run (fit.fit_phases runs the phases; each is a whole run in run_dir/phase_K).

The run directory itself keeps config.yaml (with phases), train.log and status.json (phase K/N) for
the whole run, history.csv/json over all phases (a `phase` column, epochs counted across phases), and,
once the last phase has finished, its best_model.pt, final_model.pt and test_results.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from kiln.config import RunConfig
from kiln.engine.files import write_file, write_json
from kiln.engine.report import plot_learning_curves, write_summary
from kiln.engine.rundir import write_history

WEIGHTS = {"best": "best_model.pt", "last": "final_model.pt"}


def phase_state(phase_dir: Path) -> str | None:
    try:
        return json.loads((phase_dir / "status.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


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
        data = (last / name).read_bytes()
        write_file(run_dir / name, lambda f: f.write(data), binary=True)
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    figures = {"Learning curves over all phases": "learning_curves.png"} if plot_learning_curves(run_dir, report / "learning_curves.png") else {}
    figures.update({f"Phase {k} report": f"../phase_{k}/report/report.md" for k in range(1, count + 1)})
    results = json.loads((run_dir / "test_results.json").read_text())
    if (last / "report" / "headline.json").is_file():  # the last phase's headline is the run's
        headline = (last / "report" / "headline.json").read_bytes()
        write_file(report / "headline.json", lambda f: f.write(headline), binary=True)
    write_summary(report, f"{cfg.recipe} run {cfg.name}: {count} phases (test results of phase {count})",
                  {k: v for k, v in results.items() if not isinstance(v, (dict, list))}, figures)
    status = json.loads((last / "status.json").read_text())
    write_json(run_dir / "status.json", {**status, "phase": f"{count}/{count}", "state": "finished"})
