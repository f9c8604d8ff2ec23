"""Progress of long work outside the training loop: data generation and collection, reference fits, evaluation
sets, sweeps.

On a terminal it is a rich bar with an ETA (gone when the work ends). Elsewhere (a log file, CI, a pipe) it is a
plain line through `log` every `every_s` seconds, and none at all for work that ends sooner:

    Collecting episodes: 7/16 (44%) after 52 s, about 67 s left

The training loop keeps its own epoch bar (loop.py). rich shows a bar inside another; where an older rich
allows one live display at a time (LiveError), the inner one falls back to the plain lines.
"""

from __future__ import annotations

from time import monotonic
from typing import Callable, Iterable, Iterator, TypeVar

from kiln.engine.rundir import stdout_is_terminal

T = TypeVar("T")
EVERY_S = 30.0


class Progress:
    """`with Progress("Fitting", total=207) as p: ... p.advance()` (see the module docstring)."""

    def __init__(self, description: str, total: int, log: Callable[[str], None] = print, every_s: float = EVERY_S):
        self.description, self.total, self.log, self.every_s = description, total, log, every_s
        self.done, self.bar = 0, None

    def __enter__(self) -> "Progress":
        self.started = self.last_line = monotonic()
        if stdout_is_terminal():
            from rich.errors import LiveError
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            try:
                bar.start()
                self.bar, self.task = bar, bar.add_task(self.description, total=self.total)
            except LiveError:  # another bar is showing, on a rich that shows one at a time
                pass
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        now = monotonic()
        if now - self.last_line >= self.every_s and self.done < self.total:
            self.last_line = now
            elapsed = now - self.started
            left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            self.log(f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}) after {elapsed:.0f} s, "
                     f"about {left:.0f} s left")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def track(items: Iterable[T], description: str, total: int | None = None, log: Callable[[str], None] = print,
          every_s: float = EVERY_S) -> Iterator[T]:
    """Each of `items` in turn, with a Progress over them (`total` defaults to len(items))."""
    with Progress(description, len(items) if total is None else total, log, every_s) as progress:
        for item in items:
            yield item
            progress.advance()
