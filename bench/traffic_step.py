"""STMGT training-step cost on Los-loop (207 detectors): the seed's one-token-per-step layout with the
full graph, against kiln's los_loop.yaml choices (15-minute patches, 6 strongest upstream neighbours), and that
layout with its graph attention as one gather over a dense [N, 1 + 6] neighbour table (model.graph_attention: dense)
instead of torch_geometric's scatter-based GATv2Conv.

Same hidden size, blocks, batch (32 windows), optimizer and threads in one process; a step is forward,
mixture loss, backward and AdamW. Last line: JSON with `ratio` = baseline ms per step / kiln ms per step and
`ratio_dense_attention` = GATv2Conv ms per step / dense-table ms per step on the same layout.

    python bench/traffic_step.py          # needs ../shared/data/los-loop (or pass its folder)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from kiln.engine.devices import set_threads  # noqa: E402
from kiln.recipes import get_recipe, load_recipe_config  # noqa: E402
from kiln.recipes.traffic.data import convert_los_loop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "seed layout: 12 tokens, all 2626 edges": ["model.patch_len=1", "model.max_neighbors=null"],
    "15-minute patches, all edges": ["model.patch_len=3", "model.max_neighbors=null"],
    "kiln los_loop.yaml: patches + 6 neighbours": [],  # GATv2Conv (scatter over the edge list)
    "patches + 6 neighbours, dense neighbour table": ["model.graph_attention=dense"],
}
KILN, DENSE = "kiln los_loop.yaml: patches + 6 neighbours", "patches + 6 neighbours, dense neighbour table"


def ms_per_step(task, batch, steps: int = 6) -> float:
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        task.training_step(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return 1000 * min(times[1:])  # best of the warm steps: this VM's noise is one-sided


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "los-loop"
    set_threads(None)
    recipe = get_recipe("traffic")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "los-loop"
        convert_los_loop(source, data, log=lambda m: None)
        for name, overrides in VARIANTS.items():
            _, cfg = load_recipe_config(ROOT / "configs/traffic/los_loop.yaml", [f"data.dir={data}", *overrides])
            splits = recipe.load_data(cfg, lambda m: None)
            torch.manual_seed(0)
            task = recipe.build_task(cfg, splits.info).train()
            batch = {k: v[:cfg.train.batch_size] for k, v in splits.train.items()}
            figures[name] = ms_per_step(task, batch)
            print(f"{name:45s} {figures[name]:8.1f} ms/step  ({task.model.edge_index.shape[1]} edges)", flush=True)
    baseline, kiln = figures[next(iter(VARIANTS))], figures[KILN]
    print(json.dumps({"ratio": round(baseline / kiln, 3), "ratio_patches_only": round(baseline / figures["15-minute patches, all edges"], 3),
                      "ratio_dense_attention": round(kiln / figures[DENSE], 3),
                      "baseline_ms_per_step": round(baseline, 1), "kiln_ms_per_step": round(kiln, 1)}))


if __name__ == "__main__":
    main()
