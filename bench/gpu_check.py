"""The CUDA check: every recipe's quick config on the GPU, with `precision: auto`, compiled and not.

For each recipe it trains configs/<recipe>/quick.yaml on cuda (train.max_steps capped by --steps) twice,
with train.compile off and on, and prints steps/s after the first epoch's warm-up (from history.csv's
train_time_s), the compile seconds and the recipe's headline metric against its baseline. It also checks what
only a GPU shows: that auto picks bf16-mixed (or 16-mixed) there, that a bf16 autocast step runs, that the
DataLoader path pins memory, and that kiln export's ONNX parity holds for a model trained on CUDA.

    python bench/gpu_check.py [--recipes nav,traffic] [--steps 300]

Without CUDA it says so in one line and exits 0. Last line: JSON with one entry per recipe and the checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

RECIPES = ("nav", "traffic", "world", "printer", "seqgen")


def steps_per_s(run_dir: Path) -> float | None:
    """Optimizer steps per second of training time after the first validation period (its compile and warm-up)."""
    history = json.loads((run_dir / "history.json").read_text())
    steps, times = history.get("step", []), history.get("train_time_s", [])
    if len(steps) < 2:
        return steps[0] / times[0] if steps and times and times[0] else None
    return (steps[-1] - steps[0]) / max(sum(times[1:]), 1e-9)


def train_quick(recipe_name: str, work: Path, compile_on: bool, max_steps: int, device: str = "cuda",
                extra: tuple[str, ...] = ()) -> dict:
    """configs/<recipe>/quick.yaml for `max_steps` on `device`, compiled or not: steps/s, precision, compile line."""
    from kiln.engine.fit import fit
    from kiln.recipes import load_recipe_config

    recipe, cfg = load_recipe_config(ROOT / "configs" / recipe_name / "quick.yaml",
                                     [f"train.device={device}", "train.precision=auto", f"train.compile={str(compile_on).lower()}",
                                      f"train.max_steps={max_steps}", "train.loggers=[]",
                                      f"data.dir={work / 'data' / recipe_name}", *extra])
    run_dir = work / f"{recipe_name}-{'compiled' if compile_on else 'eager'}"
    started = time.perf_counter()
    results = fit(cfg, recipe, run_dir)
    log = (run_dir / "train.log").read_text()
    compile_line = next((line for line in log.splitlines() if line.startswith("train.compile:")), None)
    return {"steps_per_s": steps_per_s(run_dir), "wall_s": round(time.perf_counter() - started, 1),
            "precision": json.loads((run_dir / "run.json").read_text())["invocations"][0]["precision"],
            "compile": compile_line, "headline": recipe.headline(results), "run_dir": str(run_dir)}


def device_checks(work: Path) -> dict:
    from kiln.engine.batches import make_batches
    from kiln.engine.devices import resolve_precision

    checks = {"auto_precision": resolve_precision("auto", "cuda")[0]}
    x = torch.randn(64, 64, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = x @ x
    y.float().sum().backward()
    checks["bf16_autocast"] = y.dtype == torch.bfloat16 and x.grad is not None
    batches = make_batches({"x": torch.randn(256, 8)}, 64, shuffle=True, num_workers=2, pin_memory=True)
    checks["pinned_dataloader"] = all(batch["x"].is_pinned() for batch in batches.epoch())
    return checks


def export_check(run_dir: Path) -> dict:
    from kiln.engine.export import PARITY, export_run
    from kiln.recipes import load_recipe_config

    recipe, cfg = load_recipe_config(run_dir / "config.yaml")
    result = export_run(run_dir, recipe, cfg, "onnx")
    return {"onnx_max_abs_diff": result["max_abs_diff"], "within_parity": result["max_abs_diff"] <= PARITY}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per training (train.max_steps)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here; nothing to check")
        print(json.dumps({"cuda": False}))
        return
    out = {"cuda": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "recipes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["checks"] = device_checks(work)
        for name in args.recipes.split(","):
            entry = {}
            for compile_on in (False, True):
                try:
                    entry["compiled" if compile_on else "eager"] = train_quick(name, work, compile_on, args.steps)
                except Exception as err:  # one recipe's failure is a result, not the end of the check
                    entry["compiled" if compile_on else "eager"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            if "run_dir" in entry["eager"]:
                try:
                    entry["export"] = export_check(Path(entry["eager"]["run_dir"]))
                except Exception as err:
                    entry["export"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            out["recipes"][name] = entry
            eager, compiled = entry["eager"], entry["compiled"]
            print(f"{name}: eager {eager.get('steps_per_s')} steps/s, compiled {compiled.get('steps_per_s')} steps/s "
                  f"({compiled.get('compile') or compiled.get('error')}), precision {eager.get('precision')}, "
                  f"headline {eager.get('headline') or eager.get('error')}", flush=True)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
