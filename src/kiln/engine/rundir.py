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

from kiln.engine.files import refuse_file_in_path, write_file, write_json
from kiln.errors import KilnError


def default_run_dir(recipe: str, name: str) -> Path:
    return Path("runs") / recipe / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


# Files that mark a directory as a kiln run: only such a directory is ever deleted by --overwrite.
RUN_MARKERS = ("status.json", "run.json")
LOCK = ".lock"


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a run dir that cannot become this run's: under a file, not
    writable, or not empty without --overwrite; --overwrite replaces only a directory that holds a kiln run."""
    path = Path(path)
    refuse_file_in_path(path, "--run-dir")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KilnError(f"run dir '{path}': '{existing}' is not writable; pass a --run-dir you may write to")
    entries = [p.name for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    if entries and not overwrite:
        raise KilnError(f"run dir '{path}' is not empty; pass --overwrite to replace it, --resume {path} to continue it, "
                        f"or another --run-dir")
    if entries and not any((path / marker).is_file() for marker in RUN_MARKERS):
        raise KilnError(f"run dir '{path}' is not a kiln run (no {' or '.join(RUN_MARKERS)}), so --overwrite will not "
                        f"delete it; pass another --run-dir")


def clear_run_dir(path: Path) -> None:
    """Everything in a run dir except its lock (what --overwrite replaces, once the new run has started)."""
    for entry in path.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunLock:
    """run_dir/.lock: only one process trains in a run directory at a time.

    An exclusive flock on the file, which also records the holder's pid, host and start time. The kernel
    drops the lock when its process dies (kill -9, power loss, OOM), so a stale lock is never a question of
    guessing from a pid that may have been reused: the next kiln takes it over and says whose it was."""

    def __init__(self, fd: int, path: Path, previous: dict[str, Any]):
        self.fd, self.path, self.previous = fd, path, previous

    @classmethod
    def acquire(cls, run_dir: Path, wait_s: float = 2.0) -> RunLock:
        import fcntl

        path = Path(run_dir) / LOCK
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                from kiln.engine.files import write_failed

                raise write_failed(path, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:  # `kiln status` may be peeking at it for a moment
                    time.sleep(0.05)
                    continue
                holder = read_lock(path)
                pid = holder.get("pid", "?")
                raise KilnError(f"run dir '{run_dir}' is in use by a running kiln (pid {pid} on {holder.get('host', '?')}); "
                                f"stop it first (kill -INT {pid}) or pass another --run-dir") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder removed the file while we waited for it: lock the new one
                os.close(fd)
                continue
            previous = read_lock(path)
            record = {"pid": os.getpid(), "host": platform_node(), "started": datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
            return cls(fd, path, previous if previous.get("pid") not in (None, os.getpid()) else {})

    def taken_over(self) -> str | None:
        """The line to log when the lock was left by a process that is gone."""
        p = self.previous
        if not p:
            return None
        return f"Took over the lock of {self.path.parent}: its holder (pid {p.get('pid')} on {p.get('host')}, started " \
               f"{p.get('started')}) is gone"

    def release(self, remove: bool = True) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def read_lock(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def lock_held(run_dir: Path) -> bool | None:
    """Whether a live process holds run_dir's lock (None: the run has no lock file, e.g. it was written by an older
    kiln). Peeks with a shared lock, which never blocks the holder's exclusive one."""
    import fcntl

    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock we took
    return False


def platform_node() -> str:
    import platform

    return platform.node()


class RunLog:
    """Console + train.log: every line the user sees is also in the run's log (and a multi-phase run's
    phase lines in both the phase's log and the run's). `quiet` is for DDP ranks other than 0.
    `held=True` keeps the lines until `attach(path)`: a run checks its config and data before it writes its
    directory, and the lines of those checks reach train.log once it exists."""

    def __init__(self, paths: Path | list[Path] | None = None, quiet: bool = False, held: bool = False):
        self.paths = [paths] if isinstance(paths, Path) else list(paths or [])
        self.quiet = quiet
        self.held: list[str] | None = [] if held else None

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        print(message, flush=True)
        if self.held is not None:
            self.held.append(message)
            return
        self.write(self.paths, [message])

    def attach(self, *paths: Path) -> None:
        """Start writing to `paths`, beginning with the lines held so far."""
        self.paths += paths
        if self.held is not None and not self.quiet:
            self.write(list(paths), self.held)
        self.held = None

    @staticmethod
    def write(paths: list[Path], lines: list[str]) -> None:
        for path in paths:
            try:
                with open(path, "a") as f:
                    f.write("".join(line + "\n" for line in lines))
            except OSError as err:
                from kiln.engine.files import write_failed

                raise write_failed(path, err) from None


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


def write_run_record(run_dir: Path, precision: str, why: str, world_size: int, init_from: str | None = None) -> None:
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
        "init_from": init_from,
    })
    write_json(path, record)


def invocation(run_dir: Path, index: int) -> dict[str, Any]:
    """run.json's invocation `index` (0: the run's first `kiln train`, -1: its latest start); {} where there is none
    or the file is not kiln's."""
    try:
        record = json.loads((run_dir / "run.json").read_text())["invocations"][index]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    return record if isinstance(record, dict) else {}
