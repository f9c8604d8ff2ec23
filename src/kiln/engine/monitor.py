"""A run seen from another process (read_status: dead runs named), `kiln logs --follow` and `kiln tb`; `kiln status`'s
table is runs.print_status."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

from kiln.engine.rundir import lock_held
from kiln.errors import KilnError

STALE_AFTER_S = 120  # a "running" run without a lock file whose heartbeat is older than this died


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(run_dir: Path) -> dict:
    """status.json, with a run whose process died without saying so (kill -9, power loss, OOM) shown as "dead":
    its lock is no longer held (or, for a run without a lock file, its pid is gone or its heartbeat is old)."""
    path = run_dir / "status.json"
    if not path.is_file():
        raise KilnError(f"'{run_dir}' has no status.json; pass a directory written by kiln train")
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KilnError(f"'{path}' is damaged ({type(err).__name__}); the run's other files are intact, "
                        f"resume it with kiln train --resume {run_dir}") from None
    if not isinstance(status, dict):
        raise KilnError(f"'{path}' is not a kiln status file; pass a directory written by kiln train")
    if status.get("state") in ("running", "evaluating"):
        owner = run_dir.parent if run_dir.name.startswith("phase_") else run_dir  # a phase's lock is its run's
        held = lock_held(owner)
        if held is False or (held is None and not heartbeat_alive(status)):
            status["was"] = status["state"]
            status["state"] = "dead"
    return status


def heartbeat_alive(status: dict) -> bool:
    try:
        age = (datetime.now() - datetime.fromisoformat(status["heartbeat"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return False
    return process_alive(status.get("pid")) and age <= STALE_AFTER_S


def is_live(run_dir: Path) -> bool:
    """Whether a process is still at work in the run: its state says so, or it has not written status.json yet but
    holds the run's lock (a run between its first log line and its first epoch)."""
    if not (run_dir / "status.json").is_file():
        return lock_held(run_dir) is True
    return read_status(run_dir).get("state") in ("running", "evaluating")


def follow_log(run_dir: Path, follow: bool, poll_s: float = 0.5) -> None:
    """Print train.log; with `follow`, keep printing what is appended until the run stops (finished, failed,
    interrupted or dead), then print the lines it wrote before it stopped and return."""
    path = run_dir / "train.log"
    if not path.is_file():
        raise KilnError(f"'{run_dir}' has no train.log; pass a directory written by kiln train")
    with open(path) as f:
        while True:
            live = follow and is_live(run_dir)  # checked before reading, so the last lines are never left unread
            text = f.read()
            if text:
                print(text, end="", flush=True)
            if not live:
                return
            time.sleep(poll_s)


def tensorboard_command(logdir: Path) -> list[str]:
    """The command `kiln tb` runs: the tensorboard executable beside this Python (or on PATH), else the module."""
    import shutil
    import sys

    beside = Path(sys.executable).with_name("tensorboard")
    executable = str(beside) if beside.is_file() else shutil.which("tensorboard")
    return [executable, "--logdir", str(logdir)] if executable else [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]


def start_tensorboard(logdir: Path) -> int:
    """`kiln tb`: TensorBoard on a folder of runs (every run's tb/ below it), in the foreground until Ctrl-C."""
    import importlib.util
    import shlex
    import subprocess

    if not Path(logdir).is_dir():
        raise KilnError(f"'{logdir}' is not a directory; pass a folder of runs (default runs/)")
    if importlib.util.find_spec("tensorboard") is None:
        raise KilnError(f"tensorboard is not installed; run: pip install tensorboard && tensorboard --logdir {shlex.quote(str(logdir))}")
    command = tensorboard_command(logdir)
    print(f"Running: {shlex.join(command)} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.run(command).returncode
    except KeyboardInterrupt:
        return 0


def print_results(results: dict, title: str) -> None:
    """The metrics a train or evaluate call produced: scalars in one table, then each nested table
    (e.g. per horizon: {"15min": {"mae": ...}}) as its own; deeper structures stay in the JSON file."""
    from rich.console import Console
    from rich.table import Table

    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    console = Console()
    table = Table("metric", "value", title=title)
    for key, value in results.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, cell(value))
    console.print(table)
    for key, value in results.items():
        if not isinstance(value, dict) or not value:
            continue
        rows = value if all(isinstance(v, dict) for v in value.values()) else {"": value}
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        if any(isinstance(v, (dict, list)) for row in rows.values() for v in row.values()):
            continue
        sub = Table("", *columns, title=key)
        for name, row in rows.items():
            sub.add_row(name, *(cell(row.get(c, "")) for c in columns))
        console.print(sub)
