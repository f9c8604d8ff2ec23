"""Engine overhead: training steps/s through kiln vs a minimal hand-written PyTorch loop.

Both train the same task (model + loss + metrics) on the same in-memory data, with the same
optimizer, schedule, clipping and torch threads, in this one process. kiln's rate comes from the
`train_time_s` it records per epoch (the step loop only; validation and checkpoints are per epoch,
not per step). The first epoch of each is a warm-up; each side's rate is its best epoch over all
rounds, since a 2-core VM's noise only ever slows a run down. Last line: JSON with `ratio` = kiln / raw.

    python bench/engine_overhead.py            # nav quick model (configs/nav/quick.yaml, bf16-mixed)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from kiln.engine.devices import accelerator_for, resolve_precision, set_threads  # noqa: E402
from kiln.engine.schedules import build_optimizer, build_scheduler  # noqa: E402
from kiln.engine.trainer import fit  # noqa: E402
from kiln.recipes import get_recipe, load_recipe_config  # noqa: E402

EPOCHS = 4  # first one is warm-up


def kiln_steps_per_s(cfg, work: Path) -> float:
    run_dir = work / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    fit(cfg, get_recipe(cfg.recipe), run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    steps_per_epoch = json.loads((run_dir / "status.json").read_text())["step"] / EPOCHS
    return steps_per_epoch / min(history["train_time_s"][1:])


def raw_steps_per_s(cfg) -> float:
    """What a user would write by hand: shuffle, slice, forward, backward, clip, step."""
    recipe = get_recipe(cfg.recipe)
    recipe.prepare_data(cfg, print)
    splits = recipe.load_data(cfg, print)
    torch.manual_seed(cfg.train.seed)
    task = recipe.build_task(cfg, splits.info)
    optimizer = build_optimizer(task, cfg.train)
    n, bs = len(splits.train["cells"]), cfg.train.batch_size
    scheduler = build_scheduler(optimizer, cfg.train, -(-n // bs))
    precision, _ = resolve_precision(cfg.train.precision, accelerator_for(cfg.train.device))
    assert precision in ("32", "bf16-mixed"), "the raw loop mirrors fp32 and CPU bf16 autocast only"
    bf16 = precision == "bf16-mixed"
    task.train()
    times = []
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        order = torch.randperm(n)
        for i in range(0, n, bs):
            batch = {k: v[order[i:i + bs]] for k, v in splits.train.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the config's precision, as kiln uses it
                loss = task.training_step(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.train.gradient_clip_val)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        times.append(time.perf_counter() - start)
    return -(-n // bs) / min(times[1:])


def measure(name: str, cfg, work: Path, rounds: int = 2) -> dict:
    raw, kiln = [], []
    for _ in range(rounds):  # interleave so that machine noise hits both alike
        raw.append(raw_steps_per_s(cfg))
        kiln.append(kiln_steps_per_s(cfg, work))
    result = {"raw_steps_per_s": max(raw), "kiln_steps_per_s": max(kiln)}
    result["ratio"] = result["kiln_steps_per_s"] / result["raw_steps_per_s"]
    print(f"{name}: raw {result['raw_steps_per_s']:.1f} steps/s ({1e3 / result['raw_steps_per_s']:.2f} ms/step), "
          f"kiln {result['kiln_steps_per_s']:.1f} steps/s ({1e3 / result['kiln_steps_per_s']:.2f} ms/step), ratio {result['ratio']:.3f}")
    return result


def main() -> None:
    set_threads(None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = [f"data.dir={work / 'data'}", f"train.max_epochs={EPOCHS}", "train.loggers=[]", "train.patience=null"]
        quick = load_recipe_config(ROOT / "configs/nav/quick.yaml", common)[1]
        # A ~1 ms/step model, where per-step engine cost shows most.
        tiny = load_recipe_config(ROOT / "configs/nav/quick.yaml", common + ["model.dim=16", "model.depth=1", "model.token_hidden=16",
                                                                              "model.recursions=1", "train.batch_size=32",
                                                                              "train.precision=32"])[1]
        results = {"quick": measure("nav quick model", quick, work), "tiny": measure("nav tiny model", tiny, work)}
    print(json.dumps({"ratio": round(results["quick"]["ratio"], 3), "ratio_tiny_model": round(results["tiny"]["ratio"], 3),
                      "quick_ms_per_step_raw": round(1e3 / results["quick"]["raw_steps_per_s"], 3),
                      "tiny_ms_per_step_raw": round(1e3 / results["tiny"]["raw_steps_per_s"], 3)}))


if __name__ == "__main__":
    main()
