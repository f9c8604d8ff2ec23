"""bf16-mixed vs fp32 training steps of the nav mixer on this machine's CPU, beside what `precision: auto` picks.

Same model, batch, optimizer and threads in one process; the step includes forward, set loss,
backward and AdamW. Last line: JSON with `ratio` = bf16 steps/s / fp32 steps/s for the recipe2 model,
`auto` (the precision `train.precision: auto` resolves to here) and `auto_reason`. `auto` is right when
it picks bf16-mixed exactly where the ratio is above 1.

    python bench/nav_precision.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/nav_precision.py   # an AVX2-only CPU
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from kiln.engine.devices import resolve_precision, set_threads  # noqa: E402
from kiln.recipes.nav.config import MixerModel  # noqa: E402
from kiln.recipes.nav.model import build_model  # noqa: E402
from kiln.recipes.nav.metrics import optimal_set_nll  # noqa: E402

MODELS = {
    "recipe2 (dim 128, depth 3, channel_mult 2, recursions 3)": MixerModel(dim=128, depth=3, channel_mult=2, recursions=3, dropout=0.1),
    "dim 128, depth 3, channel_mult 4": MixerModel(dim=128, depth=3, dropout=0.15),
    "quick (dim 64, depth 2, recursions 2)": MixerModel(dim=64, depth=2, recursions=2, dropout=0.0),
}


def ms_per_step(model_cfg: MixerModel, bf16: bool, batch: int = 128, steps: int = 10) -> float:
    torch.manual_seed(0)
    model = build_model(model_cfg, 8)
    optimizer = torch.optim.AdamW(model.parameters())
    cells = torch.randint(0, 3, (batch, 8, 8))
    optimal = torch.nn.functional.one_hot(torch.randint(0, 5, (batch, 64)), 5).bool()
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = optimal_set_nll(model(cells)[-1], optimal)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    set_threads(None)
    auto, reason = resolve_precision("auto", "cpu")
    print(f"train.precision auto -> {auto}: {reason}")
    ratios = {}
    for name, cfg in MODELS.items():
        fp32, bf16 = ms_per_step(cfg, False), ms_per_step(cfg, True)
        ratios[name] = fp32 / bf16
        print(f"{name}: fp32 {fp32:.1f} ms/step, bf16-mixed {bf16:.1f} ms/step, speed-up {fp32 / bf16:.2f}x")
    print(json.dumps({"ratio": round(next(iter(ratios.values())), 3), "auto": auto, "auto_reason": reason,
                      **{k: round(v, 3) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
