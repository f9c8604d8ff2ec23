"""`kiln runs [DIR]`: one table of every run under a folder, from the files each run holds.

    find_runs()     every run directory under a folder (a sweep's --out included); a phased run is one run
    run_summary()   one run as one row: recipe, name, state (dead runs named), epoch, monitored best, headline, times
    list_runs()     the rows of a folder, filtered and sorted as `kiln runs` asks
    print_runs()    the console table (`--json` prints the rows instead)

Nothing here imports torch: a table of a hundred runs answers at once.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import yaml

from kiln.engine.monitor import read_status
from kiln.engine.rundir import invocation
from kiln.errors import KilnError

STATES = ("running", "evaluating", "finished", "failed", "interrupted", "dead")
LIVE = ("running", "evaluating")
COLUMNS = ("started", "duration", "name", "recipe", "state", "best", "headline")  # what --sort takes besides test metrics


def find_runs(root: Path) -> list[Path]:
    """Every directory under `root` that holds a kiln run (a status.json), `root` itself included. A run's own
    folders (phase_K, checkpoints, report) are not searched: a phased run is one run."""
    root = Path(root)
    if not root.is_dir():
        raise KilnError(f"'{root}' is not a directory; pass a folder of runs, e.g. kiln runs runs/")
    found = []
    for directory, subdirs, files in os.walk(root):
        if "status.json" in files:
            found.append(Path(directory))
            subdirs.clear()
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))  # no temporaries (.name.tmp-*)
    return sorted(found)


def headline_of(recipe, results: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's headline of a test_results.json dict, or None for a recipe without one (or results written
    before it measured the baseline)."""
    if recipe is None:
        return None
    try:
        return recipe.headline(results)
    except (ImportError, AttributeError, LookupError, TypeError):
        return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as plain data (not validated: listing runs must not fail on a run of another kiln version)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def run_summary(run_dir: Path, recipes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One run as one row (what `kiln runs --json` prints). The headline and test metrics are those of a finished
    run only; a run that is running again (resumed for more epochs) shows its old results nowhere."""
    config = run_config(run_dir)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    try:
        status = read_status(run_dir)
    except KilnError as err:
        status = {"state": "damaged", "error": str(err)}
    status.setdefault("state", "unknown")
    started = parse_time(invocation(run_dir, 0).get("started"))
    ended = datetime.now() if status["state"] in LIVE else parse_time(status.get("heartbeat"))
    row = {
        "run": str(run_dir), "recipe": config.get("recipe", "?"), "name": config.get("name", run_dir.name),
        "state": status["state"], "was": status.get("was"), "phase": status.get("phase"), "phase_name": status.get("phase_name"),
        "epoch": status.get("epoch", 0), "max_epochs": status.get("max_epochs"), "step": status.get("step", 0),
        "monitor": status.get("monitor", train.get("monitor")), "mode": train.get("mode", "min"),
        "best": status.get("best"), "best_epoch": status.get("best_epoch"), "headline": None, "test": None,
        "started": started.isoformat(timespec="seconds") if started else None,
        "duration_s": (ended - started).total_seconds() if started and ended else None,
        "heartbeat": status.get("heartbeat"), "error": status.get("error"),
    }
    results = read_json(run_dir / "test_results.json") if status["state"] == "finished" else None
    if isinstance(results, dict):
        row["test"] = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row["headline"] = headline_of((recipes or {}).get(row["recipe"]), results)
    return row


def sort_key(row: dict[str, Any], metric: str) -> float | str | None:
    """The value a row sorts by; `best` and `headline` are signed so that the better value sorts first."""
    if metric == "best":
        best = row["best"]
        return None if best is None else (best if row["mode"] == "min" else -best)
    if metric == "headline":
        h = row["headline"]
        return None if h is None else (-h["value"] if h["higher_is_better"] else h["value"])
    if metric == "duration":
        return row["duration_s"]
    if metric in COLUMNS:
        return row[metric]
    return (row["test"] or {}).get(metric)


def list_runs(root: Path, recipes: Mapping[str, Any] | None = None, *, recipe: str | None = None, state: str | None = None,
              sort: str | None = None) -> list[dict[str, Any]]:
    """The rows of every run under `root`, of one recipe and/or in one state, sorted by `sort`: a column of COLUMNS
    or a test metric (a scalar of test_results.json), ascending (best first for best and headline), runs without
    it last; a leading "-" reverses the order."""
    rows = [run_summary(run_dir, recipes) for run_dir in find_runs(root)]
    if recipe is not None:
        if recipes is not None and recipe not in recipes and all(r["recipe"] != recipe for r in rows):
            raise KilnError(f"unknown recipe '{recipe}'; available: {', '.join(sorted(recipes))}")
        rows = [r for r in rows if r["recipe"] == recipe]
    if state is not None:
        rows = [r for r in rows if r["state"] == state]
    if sort:
        metric, reverse = sort.removeprefix("-"), sort.startswith("-")
        known = set(COLUMNS) | {k for r in rows for k in (r["test"] or {})}
        if metric not in known:
            raise KilnError(f"--sort {metric}: not a column or test metric of these runs; choose one of: {', '.join(sorted(known))}")
        present = [r for r in rows if sort_key(r, metric) is not None]
        present.sort(key=lambda r: sort_key(r, metric), reverse=reverse)
        rows = present + [r for r in rows if sort_key(r, metric) is None]
    return rows


def state_label(row: dict[str, Any], resume_hint: bool = False) -> str:
    if row["state"] != "dead":
        return row["state"]
    hint = f"; kiln train --resume {row['run']}" if resume_hint else ""
    return f"dead (was {row['was']}{hint})"


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)  # a hand-edited status.json: shown as it is
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e4 else f"{value:g}"


def epoch_cell(row: dict[str, Any]) -> str:
    cell = f"{row['epoch']}/{row['max_epochs'] if row['max_epochs'] is not None else '?'}"
    return f"{cell} (phase {row['phase']})" if row["phase"] else cell


def best_cell(row: dict[str, Any]) -> str:
    if row["best"] is None:
        return "-"
    return f"{row['monitor']} {number(row['best'])} @{row['best_epoch']}"


def headline_cell(headline: dict[str, Any] | None) -> str:
    if headline is None:
        return "-"
    return f"{headline['metric']} {number(headline['value'])} vs {headline['baseline']} {number(headline['baseline_value'])}"


def duration_cell(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def print_runs(rows: list[dict[str, Any]], root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        raise KilnError(f"no runs under '{root}' match; kiln train writes them under runs/<recipe>/")
    table = Table("run", "recipe", "name", "state", "epoch", "monitored best @epoch", "test: headline vs baseline", "started", "duration")
    for row in rows:
        run = Path(row["run"])
        started = row["started"].replace("T", " ")[:16] if row["started"] else "-"
        table.add_row(str(run.relative_to(root)) if run.is_relative_to(root) and run != Path(root) else str(run),
                      row["recipe"], row["name"], state_label(row), epoch_cell(row), best_cell(row),
                      headline_cell(row["headline"]), started, duration_cell(row["duration_s"]))
    Console(width=max(Console().width, 180)).print(table)


def print_status(run_dirs: list[Path]) -> None:
    """`kiln status`: the rows of `kiln runs` (run_summary) seen from the watching side: step and last heartbeat."""
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "state", "phase", "epoch", "step", "best @epoch", "last seen")
    for run_dir in run_dirs:
        if not (run_dir / "status.json").is_file():
            continue
        row = run_summary(run_dir)
        phase = f"{row['phase']} {row['phase_name'] or ''}".strip() if row["phase"] else "-"
        table.add_row(str(run_dir), state_label(row, resume_hint=True), phase,
                      f"{row['epoch']}/{row['max_epochs'] if row['max_epochs'] is not None else '?'}", str(row["step"]),
                      best_cell(row), last_seen(row["heartbeat"]))
    if not table.rows:
        raise KilnError("no runs found; pass run directories, e.g. kiln status runs/nav/demo")
    Console(width=max(Console().width, 120)).print(table)


def last_seen(heartbeat: str | None) -> str:
    try:
        age = (datetime.now() - datetime.fromisoformat(heartbeat)).total_seconds()
    except (TypeError, ValueError):
        return "-"
    return f"{age:.0f}s ago" if age < 3600 else heartbeat
