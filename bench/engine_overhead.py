"""Engine overhead: training steps/s through kiln vs a minimal hand-written PyTorch loop.

Both train the same task (model + loss + metrics) on the same in-memory data, with the same
optimizer, schedule, clipping and torch threads, in this one process. kiln's rate comes from the
`train_time_s` it records per epoch (the step loop only; validation and checkpoints are per epoch,
not per step). The first epoch of each is a warm-up; each side's rate is its best epoch over all
rounds, since a 2-core VM's noise only ever slows a run down.

This VM's speed drifts by more than the effect measured (the same raw loop ran at 41 and at 52 ms
per step within minutes), so the two sides alternate in short rounds: 5,000 training grids (79
steps of the quick model per epoch, a few seconds), 3 epochs a side, 5 rounds. The tiny model's
epochs (under a second) stay noisier than its engine cost, so both models are also measured step by
step: the loop's own step functions against the raw step in alternating blocks (quick: 20 blocks of
20 steps, tiny: 40 of 50), `ratio_interleaved` and `ratio_tiny_interleaved`. Last line: JSON with
`ratio` = kiln / raw on the quick model, end to end through `fit`.

    python bench/engine_overhead.py [--rounds 5]   # nav quick model (configs/nav/quick.yaml) and a tiny fp32 one
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

from kiln.engine.devices import accelerator_for, resolve_precision, set_threads  # noqa: E402
from kiln.engine.schedules import build_optimizer, build_scheduler  # noqa: E402
from kiln.engine.fit import fit  # noqa: E402
from kiln.recipes import get_recipe, load_recipe_config  # noqa: E402

EPOCHS = 3  # first one is warm-up


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


def interleaved_step_ratio(cfg, blocks: int = 40, steps: int = 50) -> float:
    """kiln's step (the loop's own micro_batches -> forward_backward -> update) against the raw step, in
    alternating blocks of `steps` steps: drift of the machine's speed hits both sides alike, so even a
    ~4 ms step's engine cost shows. Returns raw time / kiln time over all blocks."""
    from kiln.engine.devices import make_fabric
    from kiln.engine.rundir import RunLog, Status
    from kiln.engine.fit import load_splits
    from kiln.engine.loop import Run

    recipe = get_recipe(cfg.recipe)
    precision, _ = resolve_precision(cfg.train.precision, accelerator_for(cfg.train.device))
    fabric = make_fabric(cfg.train, precision)
    splits = load_splits(fabric, recipe, cfg, lambda message: None)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        run = Run(fabric, cfg, recipe.build_task(cfg, splits.info), splits, Path(tmp), RunLog([], quiet=True), Status([]), precision, 0)
        torch.manual_seed(0)
        task = recipe.build_task(cfg, splits.info)
        optimizer = build_optimizer(task, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, run.steps_per_epoch)
        bf16 = precision == "bf16-mixed"

        def kiln_stream():  # epoch after epoch, as train_epoch walks them
            for epoch in range(10**6):
                run.state.batch_in_epoch = 0
                yield from run.micro_batches(epoch)

        kiln_batches = kiln_stream()
        raw_order = torch.randperm(len(splits.train["cells"]))
        bs, total = cfg.train.batch_size, {"kiln": 0.0, "raw": 0.0}
        for block in range(blocks):
            start = time.perf_counter()
            for _ in range(steps):
                batch, window, is_update = next(kiln_batches)
                run.forward_backward(batch, window, is_update)
                if is_update:
                    run.update()
                run.status.beat(**run.state.status())
            total["kiln"] += time.perf_counter() - start
            start = time.perf_counter()
            for i in range(steps):
                lo = (block * steps + i) * bs % (len(raw_order) - bs)
                batch = {k: v[raw_order[lo:lo + bs]] for k, v in splits.train.items()}
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = task.training_step(batch)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.train.gradient_clip_val)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            total["raw"] += time.perf_counter() - start
    return total["raw"] / total["kiln"]


def measure(name: str, cfg, work: Path, rounds: int) -> dict:
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    set_threads(None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = [f"data.dir={work / 'data'}", "data.generate.num_train=5000", f"train.max_epochs={EPOCHS}",
                  "train.loggers=[]", "train.patience=null"]
        quick = load_recipe_config(ROOT / "configs/nav/quick.yaml", common)[1]
        # A ~1 ms/step model, where per-step engine cost shows most.
        tiny = load_recipe_config(ROOT / "configs/nav/quick.yaml", common + ["model.dim=16", "model.depth=1", "model.token_hidden=16",
                                                                              "model.recursions=1", "train.batch_size=32",
                                                                              "train.precision=32"])[1]
        results = {"quick": measure("nav quick model", quick, work, args.rounds),
                   "tiny": measure("nav tiny model", tiny, work, args.rounds)}
        interleaved = {"quick": interleaved_step_ratio(quick, blocks=20, steps=20), "tiny": interleaved_step_ratio(tiny)}
        for name, value in interleaved.items():
            print(f"nav {name} model, alternating blocks of steps: raw step time / kiln step time = {value:.3f}")
    print(json.dumps({"ratio": round(results["quick"]["ratio"], 3), "ratio_tiny_model": round(results["tiny"]["ratio"], 3),
                      "ratio_interleaved": round(interleaved["quick"], 3), "ratio_tiny_interleaved": round(interleaved["tiny"], 3),
                      "quick_ms_per_step_raw": round(1e3 / results["quick"]["raw_steps_per_s"], 3),
                      "tiny_ms_per_step_raw": round(1e3 / results["tiny"]["raw_steps_per_s"], 3)}))


if __name__ == "__main__":
    main()
