"""Scheduled sampling two ways (`model.sampling`): `sequential`, the original guide's 151-step loop per batch (each
step fed the truth or the model's own output of the step before; StreamlinedSequenceGenerator.rollout) vs `parallel`,
one-pass parallel scheduled sampling (a teacher-forced pass without gradients, then the mixed inputs in one
sequence-at-once pass; .teacher_forced), on the guide's StreamlinedSequenceGenerator.

Same weights, batch (32, the guide's), teacher forcing 0.7, noise, bf16 autocast where `precision: auto` picks it,
threads 1; forward, L1 loss, backward and AdamW per step; the two ways alternate in interleaved rounds and each
keeps its best round (this VM's speed drifts with the other users' load). Last line: JSON with `ratio` =
loop ms per step / parallel ms per step.

    python bench/seqgen_step.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from kiln.engine.devices import resolve_precision  # noqa: E402
from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator  # noqa: E402

BATCH, TEACHER_FORCING, NOISE, ROUNDS, STEPS = 32, 0.7, 0.05, 3, 3


def ms_per_step(model, optimizer, forward, params, target, bf16: bool) -> float:
    best = float("inf")
    for _ in range(STEPS):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = forward(params, target)
        loss = (pred.float() - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    torch.set_num_threads(1)
    precision, why = resolve_precision("auto", "cpu")
    bf16 = precision == "bf16-mixed"
    torch.manual_seed(0)
    model = StreamlinedSequenceGenerator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params, target = torch.randn(BATCH, 2), torch.randn(BATCH, 151, 5)
    ways = {"loop": lambda p, y: model.rollout(p, y, TEACHER_FORCING, NOISE),
            "parallel": lambda p, y: model.teacher_forced(p, y, TEACHER_FORCING, NOISE)}
    best = {name: float("inf") for name in ways}
    for r in range(ROUNDS):
        for name, forward in ways.items():
            best[name] = min(best[name], ms_per_step(model, optimizer, forward, params, target, bf16))
        print(f"round {r + 1}: loop {best['loop']:.1f} ms/step, parallel {best['parallel']:.1f} ms/step (best so far)", flush=True)
    ratio = best["loop"] / best["parallel"]
    print(f"precision {precision} ({why}); one-pass parallel scheduled sampling is {ratio:.2f}x faster than the step loop")
    print(json.dumps({"ratio": round(ratio, 3), "loop_ms_per_step": round(best["loop"], 1),
                      "parallel_ms_per_step": round(best["parallel"], 1), "precision": precision, "batch": BATCH}))


if __name__ == "__main__":
    main()
