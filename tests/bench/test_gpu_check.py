import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check runs for real (minutes)")
def test_without_cuda_the_gpu_check_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "gpu_check: no CUDA device is visible here; nothing to check"
    assert json.loads(lines[-1]) == {"cuda": False}
