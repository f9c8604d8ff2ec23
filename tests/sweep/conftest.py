"""Sweep fixtures: the tiny nav config of tests/conftest.py, and the processes a test starts."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def sweep_config(tiny_config) -> Path:
    """tests/conftest.py's tiny nav config, monitoring val_loss (smooth even on 64 validation grids)."""
    config = yaml.safe_load(tiny_config.read_text())
    config["train"].update(monitor="val_loss", mode="min")
    tiny_config.write_text(yaml.safe_dump(config))
    return tiny_config


@pytest.fixture
def stop_after():
    """Processes a test started, killed at the end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
        process.wait()
