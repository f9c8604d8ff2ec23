"""Progress of long work: a rich bar on a terminal, plain periodic lines elsewhere, none for short work."""

import itertools

import pytest
import torch
from rich.progress import Progress as RichProgress

from kiln.engine import progress as progress_module
from kiln.engine.batches import predict
from kiln.engine.progress import track


@pytest.fixture
def clock(monkeypatch):
    """monotonic() returns 0, 10, 20, ... seconds: one tick per call (enter, then one per item)."""
    ticks = itertools.count(0, 10)
    monkeypatch.setattr(progress_module, "monotonic", lambda: next(ticks))


def test_a_log_gets_a_line_every_30_seconds_with_the_remaining_time(monkeypatch, clock):
    monkeypatch.setattr(progress_module, "stdout_is_terminal", lambda: False)
    lines = []
    assert list(track(range(10), "Collecting episodes", log=lines.append)) == list(range(10))
    # item k ends at 10k s; a line at 30, 60 and 90 s; the rate so far (10 s an item) times the items left
    assert lines == ["Collecting episodes: 3/10 (30%) after 30 s, about 70 s left",
                     "Collecting episodes: 6/10 (60%) after 60 s, about 40 s left",
                     "Collecting episodes: 9/10 (90%) after 90 s, about 10 s left"]


def test_work_that_ends_sooner_prints_nothing(monkeypatch, clock):
    monkeypatch.setattr(progress_module, "stdout_is_terminal", lambda: False)
    lines = []
    assert list(track("abc", "Short", log=lines.append)) == ["a", "b", "c"]  # done at 30 s: the last item needs no line
    assert lines == []


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch, clock):
    monkeypatch.setattr(progress_module, "stdout_is_terminal", lambda: True)
    lines = []
    assert list(track(range(10), "Fitting", log=lines.append)) == list(range(10))
    assert lines == []


def test_a_bar_inside_another_bar_neither_fails_nor_prints_lines(monkeypatch, clock):
    monkeypatch.setattr(progress_module, "stdout_is_terminal", lambda: True)
    lines = []
    with RichProgress(transient=True):  # e.g. the training loop's epoch bar
        assert list(track(range(4), "Inner", log=lines.append)) == list(range(4))
    assert lines == []


def test_predict_with_progress_gives_the_same_outputs(monkeypatch):
    monkeypatch.setattr(progress_module, "stdout_is_terminal", lambda: False)
    split = {"x": torch.arange(10.0)[:, None]}
    plain = predict(split, lambda b: b["x"] * 2, batch_size=3)
    tracked = predict(split, lambda b: b["x"] * 2, batch_size=3, progress="Predicting")
    assert torch.equal(plain, tracked) and torch.equal(plain, torch.arange(10.0)[:, None] * 2)
