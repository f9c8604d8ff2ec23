"""`kiln compare RUN_A RUN_B ... --metric NAME`: one metric of several runs against epoch, in one plot.

Any recipe's runs: the metric is a history column (val_loss, train_mae, ...) or a column of the seed-named
CSV a task writes beside history.csv (Task.history_file, e.g. seqgen's "Validation Loss" in
training_metrics.csv). A multi-phase run is drawn over all its phases (epochs counted across phases).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


def seed_columns(run_dir: Path) -> dict[str, list]:
    """The columns of the seed-named CSVs beside history.csv (a multi-phase run's phases, in order, concatenated)."""
    import pandas as pd

    phases = sorted(run_dir.glob("phase_*"), key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else 0)
    columns: dict[str, list] = {}
    for directory in phases or [run_dir]:
        for path in sorted(directory.glob("*.csv")):
            if path.name == "history.csv":
                continue
            for name, values in pd.read_csv(path).items():
                columns.setdefault(str(name), []).extend(values.tolist())
    return columns


def metric_curve(run_dir: Path, metric: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of `metric` in one run."""
    path = run_dir / "history.json"
    if not path.is_file():
        raise KilnError(f"'{run_dir}' has no history.json; pass run directories written by kiln train")
    history = json.loads(path.read_text())
    epochs = history.get("epoch", [])
    if metric in history:
        return epochs, history[metric]
    extra = seed_columns(run_dir)
    if metric in extra and len(extra[metric]) == len(epochs):
        return epochs, extra[metric]
    names = [c for c in history if c not in ("epoch", "step")] + [c for c in extra if c not in history]
    raise KilnError(f"'{run_dir}' has no metric '{metric}'; it has: {', '.join(names)}")


def compare_runs(run_dirs: list[Path], metric: str, out: Path) -> dict[str, Any]:
    """Plot `metric` against epoch for every run into `out` (PNG); returns each run's last and best value."""
    from kiln.engine.files import make_dirs
    from kiln.engine.report import plt, save_figure

    if len({d.resolve() for d in run_dirs}) < len(run_dirs):
        raise KilnError("a run directory is given twice; pass each run once")
    curves = {str(d): metric_curve(d, metric) for d in run_dirs}
    make_dirs(out.parent)
    fig, ax = plt.subplots(figsize=(8, 5))
    summary = {}
    for name, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker="." if len(values) < 50 else None, label=Path(name).name)
        finite = [(v, e) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        best = min(finite) if finite else (None, None)
        summary[name] = {"last": values[-1] if values else None, "min": best[0], "min_epoch": best[1], "epochs": len(values)}
    ax.set_xlabel("Epoch")
    ax.set_ylabel(metric)
    ax.set_title("Training Approach Comparison")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)
    return {"metric": metric, "out": str(out), "runs": summary}
