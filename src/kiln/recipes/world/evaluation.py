"""Test evaluation of a world run (held-out track seeds): reconstruction, k-step prediction and copy-last, PSNR and
SSIM as per-frame means, plus prediction under another window's actions (whether the model uses the actions); and
the run's headline, 1-step PSNR against copy-last."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kiln.engine.batches import predict
from kiln.engine.task import Evaluation, Splits
from kiln.recipes.world.data import to_float
from kiln.recipes.world.task import WorldTask, horizons_for


def window_scores(task: WorldTask, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-window scores of one test batch, named by their place in test_results.json ("pred/5/psnr")."""
    frames, actions = to_float(batch["frames"]), batch["actions"].float()
    scores = task.scores(frames, task.predict(frames, actions, task.eval_horizon))
    shuffled = task.scores(frames, task.predict(frames, actions.roll(1, 0), task.eval_horizon))  # the batch's other windows' actions
    tables = {"recon": scores["recon"]}
    for name, source in (("pred", scores["pred"]), ("copy_last", scores["copy_last"]), ("pred_other_actions", shuffled["pred"])):
        tables.update({f"{name}/{k}": pair for k, pair in source.items()})
    return {f"{table}/{metric}": values for table, pair in tables.items() for metric, values in pair.items()}


@torch.no_grad()
def evaluate(task: WorldTask, splits: Splits, cfg, options: dict) -> Evaluation:
    """The test windows' scores, each averaged over all of its frames."""
    task.eval()
    scores = predict(splits.test, lambda batch: window_scores(task, batch), min(cfg.train.eval_batch_size, 64), task.device)
    results: dict[str, Any] = {"split": "test", "windows": len(splits.test), "context_frames": task.context,
                               "averaging": "per-frame mean of PSNR (dB) and SSIM, data_range 1.0"}
    for name, values in scores.items():
        *path, metric = name.split("/")
        node = results
        for part in path:
            node = node.setdefault(part, {})
        node[metric] = values.double().mean().item()
    results["gain_over_copy_last_db"] = {str(k): results["pred"][str(k)]["psnr"] - results["copy_last"][str(k)]["psnr"]
                                         for k in horizons_for(task.eval_horizon)}
    return Evaluation(results)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """1-step prediction PSNR on the test split against copy-last on the same frames."""
    return {"metric": "1-step PSNR (dB)", "value": results["pred"]["1"]["psnr"], "baseline": "copy-last",
            "baseline_value": results["copy_last"]["1"]["psnr"], "higher_is_better": True}
