"""Two quick-config training steps against the earlier computation of the same math, on the same weights and batch:

    world    the SSIM of the perceptual loss as two [S, S] matrix products (world/task.py ssim_fp32) against
             torchmetrics' structural_similarity_index_measure (reflect padding and an 11x11 Gaussian
             convolution over 3 channels), which the tests check it equal to in values and gradients
    traffic  STMGT's weather cross-attention as one attention over a window's N x P forecast queries
             (STMGT.attend_weather) against every node attending to its own copy of the window's weather tokens
             (the layout the tests compare it with)

A step is forward, loss, backward and AdamW, at the config's batch size, fp32, default threads. The two ways
alternate in interleaved rounds and each keeps its best (this VM's speed drifts with other users' load). Each
config's data is made first where it is missing (world collects CarRacing, about a minute). Last line: JSON with
`ratio_<recipe>` = the earlier way's ms per step / kiln's.

    python bench/quick_steps.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torchmetrics.functional.image import structural_similarity_index_measure  # noqa: E402

import kiln.recipes.world.task as world_task  # noqa: E402
from kiln.engine.devices import set_threads  # noqa: E402
from kiln.recipes import get_recipe, load_recipe_config  # noqa: E402
from kiln.recipes.traffic.model import STMGT  # noqa: E402
from references import from_tests  # noqa: E402  (bench/references.py)

ROUNDS = 5


def torchmetrics_ssim(pred, target, reduction="elementwise_mean"):
    with torch.autocast(pred.device.type, enabled=False):
        return structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction=reduction)


def first_batch(recipe_name: str, cfg, splits) -> dict:
    if recipe_name == "world":
        return splits.train.__getitems__(list(range(cfg.train.batch_size)))
    return {k: v[:cfg.train.batch_size] for k, v in splits.train.items()}


def compare(recipe_name: str, ways: dict[str, tuple[object, str, object]]) -> dict[str, float]:
    """ways: name -> (module or class, attribute, implementation), patched in turn around each timed step."""
    recipe = get_recipe(recipe_name)
    _, cfg = load_recipe_config(ROOT / "configs" / recipe_name / "quick.yaml", ["train.precision=32"])
    if not Path(cfg.data.dir).exists():
        recipe.prepare_data(cfg, print)
    splits = recipe.load_data(cfg, lambda m: None)
    torch.manual_seed(0)
    task = recipe.build_task(cfg, splits.info).train()
    batch = first_batch(recipe_name, cfg, splits)
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)

    def step():
        task.training_step(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    best = {name: float("inf") for name in ways}
    for _ in range(ROUNDS):
        for name, (owner, attribute, implementation) in ways.items():
            original = getattr(owner, attribute)
            setattr(owner, attribute, implementation)
            try:
                step()  # warm-up for this way
                started = time.perf_counter()
                step()
                step()
                best[name] = min(best[name], (time.perf_counter() - started) / 2 * 1000)
            finally:
                setattr(owner, attribute, original)
    return best


def main() -> None:
    set_threads(None)
    figures = {}
    world = compare("world", {"torchmetrics SSIM": (world_task, "ssim_fp32", torchmetrics_ssim),
                              "kiln SSIM (matrix products)": (world_task, "ssim_fp32", world_task.ssim_fp32)})
    weather_copies = from_tests("recipes/traffic/test_model.py", "weather_copies")  # attend_weather's tested reference
    traffic = compare("traffic", {"weather tokens copied per node": (STMGT, "attend_weather", weather_copies),
                                  "kiln (one attention per window)": (STMGT, "attend_weather", STMGT.attend_weather)})
    for recipe_name, best in (("world", world), ("traffic", traffic)):
        for name, ms in best.items():
            print(f"{recipe_name:8s} {name:35s} {ms:8.1f} ms/step", flush=True)
        earlier, kiln = best.values()
        figures[f"ratio_{recipe_name}"] = round(earlier / kiln, 3)
        figures[f"{recipe_name}_ms_per_step"] = {name: round(ms, 1) for name, ms in best.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
