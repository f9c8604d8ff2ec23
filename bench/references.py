"""A reference implementation from the test suite, loaded by file path (tests/ is not a package): the benches time
the very function the tests check kiln's code against, not a second copy of it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def from_tests(test_file: str, name: str):
    """`name` from tests/<test_file>, e.g. from_tests("recipes/seqgen/test_model.py", "step_loop_rollout")."""
    spec = importlib.util.spec_from_file_location(f"reference_{Path(test_file).stem}", ROOT / "tests" / test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)
