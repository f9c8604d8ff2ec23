"""The run directory: config.yaml, run.json, status.json, train.log, history.csv/json, checkpoints/, exports."""

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

from kiln.engine.files import write_file, write_json
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


class RunLog:
    """Console + train.log: every line the user sees is also in the run's log (and a multi-phase run's
    phase lines in both the phase's log and the run's). `quiet` is for DDP ranks other than 0."""

    def __init__(self, paths: Path | list[Path] | None = None, quiet: bool = False):
        self.paths = [paths] if isinstance(paths, Path) else list(paths or [])
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        print(message, flush=True)
        for path in self.paths:
            with open(path, "a") as f:
                f.write(message + "\n")


class Status:
    """status.json: state, epoch, step, best metric, pid and a heartbeat for `kiln status`. A phase of a
    multi-phase run writes its own and the run's (with `fixed` fields such as phase: 2/5)."""

    def __init__(self, paths: Path | list[Path], **fixed: Any):
        self.paths = [paths] if isinstance(paths, Path) else list(paths)
        self.fields, self.fixed, self.last_write = {}, fixed, 0.0

    def update(self, **fields: Any) -> None:
        self.fields.update(fields, pid=os.getpid(), heartbeat=datetime.now().isoformat(timespec="seconds"))
        for path in self.paths:
            write_json(path, {**self.fields, **self.fixed})
        self.last_write = time.monotonic()

    def beat(self, every_s: float = 10.0, **fields: Any) -> None:
        if time.monotonic() - self.last_write >= every_s:
            self.update(**fields)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_file(path, write)


def write_history(run_dir: Path, rows: list[dict[str, Any]], extra: tuple[str, tuple[str, ...] | dict[str, str]] | None = None) -> None:
    """history.csv (one row per epoch), history.json (one list per column, the seed's shape) and,
    when a task asks for it, an extra CSV with the seed's exact columns (e.g. training_history.csv).
    The extra columns are history columns, or a mapping {seed header: history column} ({"Train Loss": "train_loss"})."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(run_dir / "history.csv", rows, columns)
    write_json(run_dir / "history.json", {c: [row.get(c) for row in rows] for c in columns})
    if extra is not None:
        name, wanted = extra
        headers = wanted if isinstance(wanted, dict) else {c: c for c in wanted}
        write_csv(run_dir / name, [{h: row.get(key) for h, key in headers.items()} for row in rows], list(headers))


def is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def source_commit() -> dict[str, Any]:
    """The git commit of the kiln source that runs (and whether it has uncommitted changes), when it is a checkout."""
    import subprocess

    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def write_run_record(run_dir: Path, precision: str, why: str, world_size: int) -> None:
    """run.json: how to reproduce the run. Each `kiln train` on this directory (the first, every --resume)
    appends an invocation: the exact command line, when, where, with which versions."""
    import platform
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import kiln

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    path = run_dir / "run.json"
    record = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    record["invocations"].append({
        "command": shlex.join([Path(sys.argv[0]).name if sys.argv[0].endswith("kiln") else sys.argv[0], *sys.argv[1:]]),
        "cwd": os.getcwd(), "started": datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "kiln_version": kiln.__version__, **source_commit(),
        "versions": {"python": platform.python_version(), **{n: installed(n) for n in ("torch", "lightning", "numpy")}},
        "platform": platform.platform(), "precision": precision, "precision_reason": why, "processes": world_size,
    })
    write_json(path, record)
