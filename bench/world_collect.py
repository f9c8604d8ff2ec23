"""CarRacing-v3 collection: frames/s kept with K worker processes against one process, same episodes.

Both sides collect the same episodes (same track seeds, same drivers) through kiln's collector; the
1-process side runs them in this process, the K-worker side in K spawned processes (each with its own
environment). Rounds alternate the two sides (this VM's speed drifts). CarRacing renders every step
on a 1000x800 pygame surface and scales it to 96x96, so one environment manages ~100 steps/s on one
core: the parallelism is across episodes. Last line: JSON with `ratio` = K-worker frames/s over 1-process frames/s.

    python bench/world_collect.py [--workers 2] [--episodes 6] [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from kiln.recipes.world.config import CollectSettings  # noqa: E402
from kiln.recipes.world.sim import collect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], args.workers: []}
    for _ in range(args.rounds):
        for workers in rates:
            settings = CollectSettings(episodes=args.episodes, steps=args.steps, workers=workers, val_episodes=1, test_episodes=1)
            _, stats = collect(settings, lambda message: None)
            rates[workers].append(stats["frames_per_second"])
            print(f"{workers} worker(s): {stats['frames_per_second']:.1f} frames/s kept "
                  f"({stats['simulated_steps_per_second']:.1f} simulator steps/s)", flush=True)
    one, many = max(rates[1]), max(rates[args.workers])
    print(json.dumps({"ratio": round(many / one, 3), "frames_per_s_1_worker": one, f"frames_per_s_{args.workers}_workers": many,
                      "episodes": args.episodes, "steps": args.steps}))


if __name__ == "__main__":
    main()
