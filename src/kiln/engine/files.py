"""Durable writes: every file kiln owns (checkpoints, weights, history, status, dataset directories) is written
whole or not at all.

A file goes to a temporary sibling, is flushed and fsynced, then renamed over the target, and the directory is
fsynced, so a crash or a power loss leaves the old file or the new one, never a torn one. A failed write (a full
disk, a read-only directory) removes its temporary and raises a one-line KilnError naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from kiln.errors import KilnError


def write_failed(path: Path, err: OSError) -> KilnError:
    """The one line for a write the operating system refused."""
    reason = err.strerror or type(err).__name__
    hint = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
            errno.EROFS: "choose a writable directory", errno.EACCES: "choose a directory you may write to",
            errno.ENOTDIR: "a part of the path is a file; choose another path"}.get(err.errno, "check the path")
    return KilnError(f"could not write '{path}' ({reason}); {hint}")


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """`write(f)` into a temporary sibling of `path`, fsync, rename over `path`, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_failed(path, err) from None
        raise
    fsync_dir(path.parent)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save, durably: a crash or a full disk never leaves a half-written checkpoint."""
    import torch

    write_file(path, lambda f: torch.save(obj, f), binary=True)


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def check_new_directory(out: Path, what: str = "--out") -> None:
    """`out` may become a new directory: it does not exist, or is an empty directory, and no part of it is a file."""
    out = Path(out)
    refuse_file_in_path(out, what)
    if out.is_dir() and any(out.iterdir()):
        raise KilnError(f"{what} '{out}' exists and is not empty; pass another {what} or delete it")


def refuse_file_in_path(path: Path, what: str) -> None:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise KilnError(f"{what} '{path}': '{parent}' is a file, not a directory; pass another {what}")


def make_dirs(directory: Path, what: str = "--out") -> Path:
    """mkdir -p with a one-line error when a part of the path is a file or the disk refuses."""
    directory = Path(directory)
    refuse_file_in_path(directory, what)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failed(directory, err) from None
    return directory


def fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(directory))


@contextmanager
def dataset_dir(out: Path, what: str = "--out") -> Iterator[Path]:
    """Write a dataset directory whole or not at all: fill the yielded temporary sibling; when the block succeeds it
    is fsynced and renamed to `out`, on any failure (or Ctrl-C) it is removed. `out` may exist only as an empty
    directory; a non-empty one is refused before anything is written."""
    out = Path(out)
    check_new_directory(out, what)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a dataset directory is an ordinary one
    except OSError as err:
        raise write_failed(out, err) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        fsync_tree(tmp)
        os.replace(tmp, out)  # also replaces an existing empty directory
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(out, err) from None
    fsync_dir(out.parent)
