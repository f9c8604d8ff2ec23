"""train.compile on a CPU: every recipe's quick config trained for --steps optimizer steps eagerly and compiled
(torch.compile, inductor), in one process, one after the other.

Steps/s are counted after the first validation period, which holds the compile and the warm-up (the same measure
as bench/gpu_check.py, whose train_quick this reuses); the compile seconds come from the run's own
`train.compile:` log line. Last line: JSON with, per recipe, both steps/s, their ratio and the compile line.

    python bench/compile_cpu.py [--recipes nav,printer] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gpu_check import RECIPES, train_quick


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per training (train.max_steps)")
    args = parser.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes.split(","):
            extra = (f"train.val_every_n_steps={max(1, args.steps // 4)}",)
            entry = {}
            for compile_on in (False, True):
                try:
                    entry["compiled" if compile_on else "eager"] = train_quick(name, Path(tmp), compile_on, args.steps, "cpu", extra)
                except Exception as err:  # one recipe's failure is a result, not the end of the bench
                    entry["compiled" if compile_on else "eager"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            eager, compiled = entry["eager"].get("steps_per_s"), entry["compiled"].get("steps_per_s")
            entry["ratio"] = round(compiled / eager, 3) if eager and compiled else None
            for run in ("eager", "compiled"):
                entry[run].pop("run_dir", None)
            out[name] = entry
            print(f"{name}: eager {eager and round(eager, 2)} steps/s, compiled {compiled and round(compiled, 2)} steps/s "
                  f"(ratio {entry['ratio']}; {entry['compiled'].get('compile') or entry['compiled'].get('error')})", flush=True)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
