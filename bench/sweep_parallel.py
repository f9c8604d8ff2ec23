"""Benchmark: completed sweep trials per minute with 2 local workers against 1, on a small nav grid.

Run:  python bench/sweep_parallel.py
Each setting runs the same 8-point grid (model.dim x model.depth x model.dropout on 2,000 8x8 grids, 3 epochs) through
`kiln sweep --workers K` into a fresh directory; the rate is finished trials over the time from the first trial's start
to the last one's end (read from the study), so process start-up and data generation are left out. Every trial uses
one thread (train.threads: 1 in the config, which kiln sweep keeps), so the ratio measures processes, not threads.
The settings alternate (1, 2, 1, 2, ...) for REPEATS rounds and each keeps its best round, which damps the noise of
other work on the machine. The last printed line is a JSON object with the figures and `ratio`.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GRID = ["model.dim=16,32", "model.depth=1,2", "model.dropout=0.0,0.1"]
REPEATS = 2


def write_config(root: Path) -> Path:
    config = {
        "recipe": "nav",
        "data": {"dir": str(root / "data"), "generate": {"num_train": 2000, "num_val": 200, "num_test": 200,
                                                         "grid_size": 8, "seed": 0}},
        "model": {"dim": 32, "depth": 2, "token_hidden": 32, "channel_mult": 2},
        "train": {"batch_size": 64, "max_epochs": 3, "lr": 3e-3, "loggers": [], "precision": "32", "threads": 1},
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def trials_per_minute(config: Path, out: Path, workers: int) -> dict:
    from kiln.sweep.study import open_sweep

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kiln", "sweep", str(config), "--out", str(out), "--workers", str(workers),
                    "--grid", *GRID], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    finished = [t for t in open_sweep(out)[1].get_trials() if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    return {"workers": workers, "finished": len(finished), "span_s": round(span, 1), "wall_s": round(wall, 1),
            "per_minute": round(60 * len(finished) / span, 2)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root)  # the first sweep makes its data (before its first trial starts)
        rounds = [trials_per_minute(config, root / f"{workers}-{k}", workers) for k in range(REPEATS) for workers in (1, 2)]
    for row in rounds:
        print(f"  round: {row['workers']} worker(s), {row['per_minute']} trials per minute")
    one, two = (max((r for r in rounds if r["workers"] == w), key=lambda r: r["per_minute"]) for w in (1, 2))
    for row in (one, two):
        print(f"{row['workers']} worker(s): {row['finished']} trials in {row['span_s']} s "
              f"({row['per_minute']} per minute; the command took {row['wall_s']} s)")
    ratio = round(two["per_minute"] / one["per_minute"], 2)
    print(f"2 workers / 1 worker: {ratio}x trials per minute")
    print(json.dumps({"one_worker": one, "two_workers": two, "ratio": ratio}))


if __name__ == "__main__":
    main()
