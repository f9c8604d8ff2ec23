"""Run the toy recipe (tests/engine/conftest.py) through kiln's engine from a script, so that Fabric's DDP
launcher can start its second process from this file: python ddp_toy.py RUN_DIR KEY=VALUE..."""

import importlib.util
import sys
from pathlib import Path

import yaml

spec = importlib.util.spec_from_file_location("toy_conftest", Path(__file__).with_name("conftest.py"))
toy = sys.modules["toy_conftest"] = importlib.util.module_from_spec(spec)  # pydantic resolves annotations through it
spec.loader.exec_module(toy)

if __name__ == "__main__":
    from kiln.engine.devices import is_worker_process
    from kiln.engine.fit import fit

    run_dir = Path(sys.argv[1])
    train = {k: yaml.safe_load(v) for k, v in (arg.split("=", 1) for arg in sys.argv[2:])}
    if not is_worker_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    fit(toy.toy_config(**train), toy.TOY, run_dir)
