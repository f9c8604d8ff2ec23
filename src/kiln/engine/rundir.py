"""The run directory: config.yaml, status.json, train.log, history.csv/json, checkpoints/, exports."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


def default_run_dir(recipe: str, name: str) -> Path:
    return Path("runs") / recipe / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """A fresh, empty run directory; never silently reuse one that holds a run."""
    if path.exists() and not path.is_dir():
        raise KilnError(f"run dir '{path}' is a file; pass another --run-dir")
    if path.is_dir() and any(path.iterdir()):
        owner = live_owner(path)
        if owner is not None:
            raise KilnError(f"run dir '{path}' is in use by a running kiln (pid {owner}); stop it first (kill -INT {owner}) or pass another --run-dir")
        if not overwrite:
            raise KilnError(f"run dir '{path}' is not empty; pass --overwrite to replace it, --resume {path} to continue it, or another --run-dir")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def live_owner(run_dir: Path) -> int | None:
    """The pid of another live process still training in run_dir, if any (its files would race ours)."""
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid")
    if status.get("state") not in ("running", "evaluating") or not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return pid


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class RunLog:
    """Console + train.log: every line the user sees is also in the run's log."""

    def __init__(self, path: Path | None = None):
        self.path = path

    def __call__(self, message: str) -> None:
        print(message, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(message + "\n")


class Status:
    """status.json: state, epoch, step, best metric, pid and a heartbeat for `kiln status`."""

    def __init__(self, path: Path):
        self.path, self.fields, self.last_write = path, {}, 0.0

    def update(self, **fields: Any) -> None:
        self.fields.update(fields, pid=os.getpid(), heartbeat=datetime.now().isoformat(timespec="seconds"))
        write_json(self.path, self.fields)
        self.last_write = time.monotonic()

    def beat(self, every_s: float = 10.0, **fields: Any) -> None:
        if time.monotonic() - self.last_write >= every_s:
            self.update(**fields)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_history(run_dir: Path, rows: list[dict[str, Any]], extra: tuple[str, tuple[str, ...]] | None = None) -> None:
    """history.csv (one row per epoch), history.json (one list per column, the seed's shape) and,
    when a task asks for it, an extra CSV with the seed's exact columns (e.g. training_history.csv)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(run_dir / "history.csv", rows, columns)
    write_json(run_dir / "history.json", {c: [row.get(c) for row in rows] for c in columns})
    if extra is not None:
        write_csv(run_dir / extra[0], rows, list(extra[1]))


def is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
