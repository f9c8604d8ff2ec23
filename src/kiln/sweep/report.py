"""What a sweep shows: results.csv (one row per trial), the console table sorted by the objective, the PNG plots
(optimisation history, parameter importances, parallel coordinates, and for a grid a heat map of two axes) and the
best trial with the commands that re-run and export it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kiln.sweep.space import Sweep
from kiln.sweep.study import optuna, this_host

STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
COLUMNS = ("trial", "state", "objective", "best_epoch", "duration_s", "run_dir", "point", "retry_of", "host", "error")


def trial_rows(study, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial, in trial order. A failed trial that was re-queued names its re-run and why."""
    trials = study.get_trials(deepcopy=False)
    reruns = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    keys = list(sweep.grid or sweep.space)
    rows = []
    for t in trials:
        attrs = t.user_attrs
        params = t.params or t.system_attrs.get("fixed_params", {})
        rerun = reruns.get(t.number)
        error = attrs.get("error") or (f"re-queued as trial {rerun.number}: {rerun.user_attrs.get('retry_reason')}"
                                       if rerun is not None else None)
        objective = attrs.get("objective", t.value)
        rows.append({
            "trial": t.number, "state": STATES[t.state.name], **{k: params.get(k) for k in keys},
            "objective": objective, "best_epoch": attrs.get("best_epoch"),
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration is not None else None,
            "run_dir": attrs.get("run_dir"), "point": attrs.get("point"), "retry_of": attrs.get("retry_of"),
            "host": (attrs.get("worker") or {}).get("host", "").split(":")[0] or None, "error": error,
        })
    return rows


def sorted_rows(rows: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """Finished trials by objective (best first), then pruned ones, then the rest in trial order."""
    sign = -1 if direction == "max" else 1

    def key(row):
        value = row["objective"]
        scored = isinstance(value, (int, float)) and math.isfinite(value)
        rank = {"finished": 0, "pruned": 1}.get(row["state"], 2)
        return (rank if scored else 2, sign * value if scored else 0.0, row["trial"])

    return sorted(rows, key=key)


def write_results(path: Path, rows: list[dict[str, Any]], sweep: Sweep) -> None:
    from kiln.engine.rundir import write_csv

    keys = list(sweep.grid or sweep.space)
    write_csv(path, rows, ["trial", "state", *keys, *COLUMNS[2:]])


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def print_table(rows: list[dict[str, Any]], sweep: Sweep, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = list(sweep.grid or sweep.space)
    table = Table("trial", "state", *keys, sweep.objective, "best epoch", "s", "run dir", "note", title=title)
    for row in sorted_rows(rows, sweep.direction):
        note = row["error"] or (f"re-runs trial {row['retry_of']}" if row["retry_of"] is not None else "")
        table.add_row(str(row["trial"]), row["state"], *(cell(row[k]) for k in keys), cell(row["objective"]),
                      cell(row["best_epoch"]), cell(row["duration_s"]), cell(row["run_dir"]), note[:80])
    Console(width=200).print(table)


def best_trial(study):
    """The best finished trial, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_lines(study, sweep: Sweep, sweep_dir: Path) -> list[str]:
    best = best_trial(study)
    if best is None:
        return ["No trial has finished yet: no best trial"]
    run_dir = sweep_dir / best.user_attrs["run_dir"]
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    host = (best.user_attrs.get("worker") or {}).get("host", "")
    where = "" if host == this_host() else f" on {host.split(':')[0]}"  # a machine of a shared --storage
    return [f"Best: trial {best.number} ({params}): {sweep.objective} {best.value:.4f} at epoch "
            f"{best.user_attrs.get('best_epoch')}, run {run_dir}{where}",
            f"  re-run it:  kiln train {run_dir / 'config.yaml'} --run-dir runs/{sweep.recipe}/{sweep.config['name']}-best",
            f"  export it:  kiln export {run_dir} --format onnx"]


def write_plots(study, sweep: Sweep, rows: list[dict[str, Any]], out: Path, heat_map: tuple[str, str] | None) -> list[str]:
    """The PNG plots into `out`; returns one line per plot written or skipped (and why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = optuna().visualization.matplotlib

    out.mkdir(parents=True, exist_ok=True)
    finished = [r for r in rows if r["state"] == "finished"]
    lines = []
    figures = {"optimization_history.png": plots.plot_optimization_history,
               "param_importances.png": plots.plot_param_importances,
               "parallel_coordinate.png": plots.plot_parallel_coordinate}
    for name, plot in figures.items():
        if len(finished) < 2:
            lines.append(f"{name}: skipped, it needs two finished trials")
            continue
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances of parameters that never varied
            lines.append(f"{name}: skipped ({str(err).strip().splitlines()[0]})")
            continue
        save(axes.figure if hasattr(axes, "figure") else axes[0].figure, out / name, plt)
        lines.append(f"Wrote {out / name}")
    if sweep.grid is not None and len(sweep.grid) >= 2:
        axes_keys = heat_map or tuple(list(sweep.grid)[:2])
        save(plot_heat_map(finished, sweep, axes_keys, plt), out / "heat_map.png", plt)
        lines.append(f"Wrote {out / 'heat_map.png'} ({axes_keys[0]} x {axes_keys[1]})")
    return lines


def save(figure, path: Path, plt) -> None:
    from kiln.engine.files import write_file

    figure.tight_layout()
    write_file(path, lambda f: figure.savefig(f, format="png", dpi=110), binary=True)
    plt.close(figure)


def plot_heat_map(finished: list[dict[str, Any]], sweep: Sweep, keys: tuple[str, str], plt):
    """The best objective at each pair of values of two grid axes (best over the other axes)."""
    import numpy as np

    xs, ys = sweep.grid[keys[0]], sweep.grid[keys[1]]
    best = max if sweep.direction == "max" else min
    grid = np.full((len(ys), len(xs)), np.nan)
    for row in finished:
        i, j = ys.index(row[keys[1]]), xs.index(row[keys[0]])
        grid[i, j] = row["objective"] if math.isnan(grid[i, j]) else best(grid[i, j], row["objective"])
    with plt.style.context("default"):  # optuna's plots switch matplotlib to ggplot, whose grid lines cross the cells
        figure, ax = plt.subplots(figsize=(1.4 * len(xs) + 2.5, 1.0 * len(ys) + 1.8))
    image = ax.imshow(grid, cmap="viridis" if sweep.direction == "max" else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1])
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not math.isnan(grid[i, j]):
                light = image.cmap(image.norm(grid[i, j]))[:3]
                ax.text(j, i, f"{grid[i, j]:.4g}", ha="center", va="center", color="k" if sum(light) > 1.5 else "w")
    others = [k for k in sweep.grid if k not in keys]
    ax.set_title(f"{sweep.objective}" + (f" (best over {', '.join(others)})" if others else ""))
    figure.colorbar(image, ax=ax)
    return figure


def summary(rows: list[dict[str, Any]], study) -> dict[str, Any]:
    """Counts and the best trial, for the command's last line (JSON)."""
    best = best_trial(study)
    states = [row["state"] for row in rows]
    return {"trials": len(rows), **{state: states.count(state) for state in ("finished", "pruned", "failed", "running",
                                                                           "waiting")},
            "best_trial": best.number if best else None, "best_value": best.value if best else None}
