"""The seqgen generator's step-by-step rollout (StreamlinedSequenceGenerator.rollout: recurrence.py's forward and
backward written out) against the loop it replaced (nn.LSTM called once per step; the reference the tests check it
equal to, tests/recipes/seqgen/test_model.py::step_loop_rollout), and against `model.sampling: parallel`
(one-pass parallel scheduled sampling, StreamlinedSequenceGenerator.teacher_forced), on the same weights and batch.

Training step: forward, L1 loss, backward and AdamW, teacher forcing 0.7, input noise 0.05, dropout on (train
mode), `precision: auto` (bf16 autocast where it picks it; the rollout itself runs in fp32), threads 1. Generation:
free-running, no gradients, the 550 sequences of the default test split in one batch. The ways alternate in
interleaved rounds and each keeps its best round, in wall and in CPU seconds (this VM's speed drifts with the
other users' load; CPU time drifts less). Last line: JSON with `ratio` = the loop's ms per training step / the
rollout's (wall).

    python bench/seqgen_step.py                                  # the guide's size: hidden 256 x 2, batch 32
    python bench/seqgen_step.py --hidden-size 128 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from kiln.engine.devices import resolve_precision  # noqa: E402
from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator  # noqa: E402
from references import from_tests  # noqa: E402  (bench/references.py)

TEACHER_FORCING, NOISE, ROUNDS, REPEATS, GENERATED = 0.7, 0.05, 3, 3, 550


def best_of(work, repeats: int = REPEATS) -> tuple[float, float]:
    """(wall ms, CPU ms) of the fastest of `repeats` calls."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        work()
        wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.process_time() - started_cpu)
    return wall * 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    precision, why = resolve_precision("auto", "cpu")
    bf16 = precision == "bf16-mixed"
    torch.manual_seed(0)
    model = StreamlinedSequenceGenerator(hidden_size=args.hidden_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params, target = torch.randn(args.batch_size, 2), torch.randn(args.batch_size, 151, 5)
    loop = from_tests("recipes/seqgen/test_model.py", "step_loop_rollout")  # what the rollout is tested against
    samplers = {"loop": lambda: loop(model, params, target, TEACHER_FORCING, NOISE),
                "rollout": lambda: model.rollout(params, target, TEACHER_FORCING, NOISE),
                "parallel": lambda: model.teacher_forced(params, target, TEACHER_FORCING, NOISE)}

    def training_step(sample):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = sample()
        loss = (pred.float() - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    many = torch.randn(GENERATED, 2)

    @torch.no_grad()
    def generate(rollout):
        model.eval()
        rollout(model, many)
        model.train()

    work = {f"train_{name}": (lambda s=sample: training_step(s)) for name, sample in samplers.items()}
    work |= {"generate_loop": lambda: generate(loop), "generate_rollout": lambda: generate(StreamlinedSequenceGenerator.rollout)}
    best = {name: (float("inf"), float("inf")) for name in work}
    for r in range(ROUNDS):
        for name, run in work.items():
            wall, cpu = best_of(run, REPEATS if name.startswith("train") else 1)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        print(f"round {r + 1} (best so far, wall / CPU ms): " + ", ".join(f"{name} {w:.1f} / {c:.1f}" for name, (w, c) in best.items()),
              flush=True)
    ratio = best["train_loop"][0] / best["train_rollout"][0]
    print(f"precision {precision} ({why}); hidden {args.hidden_size} x 2, batch {args.batch_size}: the rollout's training "
          f"step is {ratio:.2f}x faster than the nn.LSTM step loop (CPU time {best['train_loop'][1] / best['train_rollout'][1]:.2f}x), "
          f"its generation {best['generate_loop'][0] / best['generate_rollout'][0]:.2f}x")
    print(json.dumps({"ratio": round(ratio, 3), "cpu_ratio": round(best["train_loop"][1] / best["train_rollout"][1], 3),
                      "loop_ms_per_step": round(best["train_loop"][0], 1), "rollout_ms_per_step": round(best["train_rollout"][0], 1),
                      "parallel_ms_per_step": round(best["train_parallel"][0], 1),
                      "generation_ratio": round(best["generate_loop"][0] / best["generate_rollout"][0], 3),
                      "precision": precision, "hidden_size": args.hidden_size, "batch": args.batch_size}))


if __name__ == "__main__":
    main()
