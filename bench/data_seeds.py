"""Every recipe's quick config on other data draws: the headline (and the figures its targets name) per data seed,
with the mean and the worst seed. A data seed is what makes the data, never only `train.seed`:

    nav      data.generate.seed              (the grids, their obstacles and their start/goal pairs)
    traffic  data.generate.seed              (the simulated city: its roads, demand, incidents and weather)
    world    data.generate.seed              (the CarRacing tracks and the driving policy's actions)
    printer  data.split_seed + test_models   (the layer shuffle, and which procedural print is held out whole)
    seqgen   data.generate.seed + split_seed (the physical parameters drawn, and the train/val/test shuffle)

Each seed trains `kiln train configs/<recipe>/quick.yaml` in its own process, into OUT/<recipe>/seed_<k>/ (its data
in OUT/<recipe>/seed_<k>/data, made there by the run). Last line: JSON with, per recipe, every seed's figures, their
mean and the worst seed's (the lowest where higher is better, the highest where lower is).

    python bench/data_seeds.py                                  # every recipe, seeds 0 1 2 (about 40 min on 2 cores)
    python bench/data_seeds.py --recipes seqgen,world --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kiln.recipes import get_recipe  # noqa: E402

PRINTS = ("bearing5", "3dbenchy", "nautilus", "boat", "coaster")  # printer: the print held out whole, by seed


def data_overrides(recipe: str, seed: int, data_dir: Path) -> list[str]:
    """The overrides that make seed `seed`'s data (in `data_dir`) for `recipe`'s quick config."""
    per_recipe = {
        "nav": [f"data.generate.seed={seed}"],
        "traffic": [f"data.generate.seed={seed}"],
        "world": [f"data.generate.seed={seed}"],
        "printer": [f"data.split_seed={seed}", f"data.test_models=[{PRINTS[seed % len(PRINTS)]}]"],
        "seqgen": [f"data.generate.seed={seed}", f"data.split.split_seed={seed}"],
    }
    return [f"data.dir={data_dir}", *per_recipe[recipe]]


def world_figures(results: dict[str, Any]) -> dict[str, float]:
    """The world targets' figures: PSNR and SSIM gains over copy-last at 1, 5 and 10 steps."""
    out = {}
    for step in ("1", "5", "10"):
        if step in results["pred"]:
            out[f"psnr_gain_{step}"] = results["pred"][step]["psnr"] - results["copy_last"][step]["psnr"]
            out[f"ssim_gain_{step}"] = results["pred"][step]["ssim"] - results["copy_last"][step]["ssim"]
    return out


EXTRA: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    "world": world_figures,
    "traffic": lambda r: {"coverage_80": r["coverage_80"]} if "coverage_80" in r else {},
}


def train(recipe: str, seed: int, out: Path) -> dict[str, Any]:
    """One seed's quick run -> its figures (the headline, its baseline, and the recipe's extra figures)."""
    run_dir = out / recipe / f"seed_{seed}"
    command = [sys.executable, "-m", "kiln", "train", str(ROOT / "configs" / recipe / "quick.yaml"), "--run-dir",
               str(run_dir / "run"), "--overwrite", *data_overrides(recipe, seed, run_dir / "data")]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"seed": seed, "error": last, "wall_s": round(wall, 1)}
    results = json.loads((run_dir / "run" / "test_results.json").read_text())
    head = get_recipe(recipe).headline(results)
    return {"seed": seed, "metric": head["metric"], "value": head["value"], "baseline": head["baseline"],
            "baseline_value": head["baseline_value"], "higher_is_better": head["higher_is_better"],
            **{k: round(v, 4) for k, v in EXTRA.get(recipe, lambda r: {})(results).items()}, "wall_s": round(wall, 1)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst seed of the headline, of its margin over the baseline, and of every extra figure."""
    good = [r for r in rows if "error" not in r]
    if not good:
        return {}
    sign = 1 if good[0]["higher_is_better"] else -1
    margin = [sign * (r["value"] - r["baseline_value"]) for r in good]  # > 0: the model beats its baseline
    out = {"value_mean": statistics.fmean(r["value"] for r in good),
           "value_worst": (min if sign > 0 else max)(r["value"] for r in good),
           "margin_mean": statistics.fmean(margin), "margin_worst": min(margin),
           "beats_baseline_on": f"{sum(m > 0 for m in margin)}/{len(good)}"}
    for key in good[0]:
        if key.startswith(("psnr_gain", "ssim_gain")):
            out[f"{key}_mean"], out[f"{key}_worst"] = statistics.fmean(r[key] for r in good), min(r[key] for r in good)
        elif key == "coverage_80":
            out["coverage_80_mean"] = statistics.fmean(r[key] for r in good)
            out["coverage_80_range"] = [min(r[key] for r in good), max(r[key] for r in good)]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="nav,traffic,world,printer,seqgen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "data_seeds")
    args = parser.parse_args()
    report = {}
    for recipe in args.recipes.split(","):
        rows = []
        for seed in args.seeds:
            row = train(recipe, seed, args.out)
            rows.append(row)
            print(f"{recipe} seed {seed}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "seed"), flush=True)
        report[recipe] = {"seeds": rows, **summary(rows)}
        print(f"{recipe}: " + ", ".join(f"{k} {v}" for k, v in report[recipe].items() if k != "seeds"), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
