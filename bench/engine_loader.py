"""The engine's DataLoader path against its in-memory path: training steps/s on the same data and model.

Both runs train the nav quick model through kiln (`fit`) on the same dataset: once with batches gathered
from in-memory tensors in the main process (train.num_workers=0) and once through a torch DataLoader
with worker processes (train.num_workers=2), which is the path a recipe takes for data that does not
fit in memory. Each side's rate is its best epoch's `train_time_s` after a warm-up epoch, over 4
interleaved rounds on 5,000 training grids (short rounds: this VM's speed drifts, see engine_overhead.py). Last line: JSON with `ratio` = DataLoader steps/s / in-memory steps/s.

    python bench/engine_loader.py [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_overhead import EPOCHS, ROOT, kiln_steps_per_s  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
from kiln.engine.devices import set_threads  # noqa: E402
from kiln.recipes import load_recipe_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    set_threads(None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = [f"data.dir={work / 'data'}", "data.generate.num_train=5000", f"train.max_epochs={EPOCHS}",
                  "train.loggers=[]", "train.patience=null"]
        memory = load_recipe_config(ROOT / "configs/nav/quick.yaml", common + ["train.num_workers=0"])[1]
        loader = load_recipe_config(ROOT / "configs/nav/quick.yaml", common + [f"train.num_workers={args.workers}"])[1]
        rates = {"memory": [], "loader": []}
        for _ in range(args.rounds):  # interleaved, so the machine's noise hits both alike
            rates["memory"].append(kiln_steps_per_s(memory, work))
            rates["loader"].append(kiln_steps_per_s(loader, work))
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["loader"] / best["memory"]
    print(f"nav quick model: in-memory {best['memory']:.1f} steps/s ({1e3 / best['memory']:.2f} ms/step), "
          f"DataLoader with {args.workers} workers {best['loader']:.1f} steps/s ({1e3 / best['loader']:.2f} ms/step), ratio {ratio:.3f}")
    print(json.dumps({"ratio": round(ratio, 3), "workers": args.workers, "memory_steps_per_s": round(best["memory"], 2),
                      "loader_steps_per_s": round(best["loader"], 2)}))


if __name__ == "__main__":
    main()
