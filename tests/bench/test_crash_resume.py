"""The crash bench, short: a nav run SIGKILLed once before its first checkpoint, once while writing a checkpoint,
once during a validation and once mid-epoch, resumed each time, ends with the uninterrupted run's weights and lr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_four_kill_nines_of_every_kind_resume_to_identical_weights_and_lr():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "crash_resume.py"), "--kills", "4"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kills"] == 4 and result["identical"] and result["lr_identical"]
    assert set(result["kinds"]) >= {"before the first checkpoint", "during a checkpoint write"}
