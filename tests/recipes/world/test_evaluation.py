"""World test evaluation: copy-last on known frames against a numpy reference, the results layout, batching that
does not change the figures, and the headline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.engine.task import Splits
from kiln.recipes.world.evaluation import evaluate, headline
from kiln.recipes.world.task import WorldTask

from .test_task import make_cfg


class KnownFrames(torch.utils.data.Dataset):
    """Windows with frames whose values are known, to check copy-last by hand."""

    def __init__(self, frames):
        self.frames = frames  # uint8 [N, L, S, S, 3]

    def __len__(self):
        return len(self.frames)

    def __getitems__(self, indices):
        return {"frames": self.frames[indices], "actions": torch.zeros(len(indices), self.frames.shape[1], 3)}


def known_frames(count: int) -> torch.Tensor:
    rng = np.random.default_rng(2)
    return torch.from_numpy(rng.integers(0, 256, (count, 12, 32, 32, 3), dtype=np.uint8))


def test_copy_last_baseline_on_known_frames_and_the_results_layout():
    frames = known_frames(5)
    task = WorldTask(make_cfg(), {"action_dim": 3})
    cfg = make_cfg()
    results = evaluate(task, Splits(train={}, val={}, test=KnownFrames(frames), info={}), cfg, {}).results
    x = frames.numpy().astype(np.float64) / 255
    for k in (1, 5, 10):  # frame t + k against frame t (the last of the 2 observed), per-frame PSNR, averaged
        mse = ((x[:, 1] - x[:, 1 + k]) ** 2).mean(axis=(1, 2, 3))
        assert results["copy_last"][str(k)]["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5)
    assert set(results["recon"]) == {"psnr", "ssim"}
    assert set(results["pred"]) == set(results["copy_last"]) == {"1", "5", "10"}
    assert results["windows"] == 5
    assert results["gain_over_copy_last_db"]["5"] == pytest.approx(results["pred"]["5"]["psnr"] - results["copy_last"]["5"]["psnr"])


def test_batches_do_not_change_the_figures_and_an_untrained_model_is_copy_last():
    frames = known_frames(7)
    task = WorldTask(make_cfg(), {"action_dim": 3})
    splits = Splits(train={}, val={}, test=KnownFrames(frames), info={})
    whole = evaluate(task, splits, make_cfg(), {}).results
    small = make_cfg().model_copy(update={"train": make_cfg().train.model_copy(update={"eval_batch_size": 3})})
    batched = evaluate(task, splits, small, {}).results  # batches of 3, 3 and 1 windows
    assert batched["recon"] == pytest.approx(whole["recon"], rel=1e-6)
    for table in ("pred", "copy_last", "pred_other_actions"):
        for k, pair in whole[table].items():
            assert batched[table][k] == pytest.approx(pair, rel=1e-6), (table, k)
    # untrained, the dynamics step is the identity and the decoder's change zero: prediction is copy-last whatever the actions
    for k in ("1", "5", "10"):
        assert whole["pred"][k] == pytest.approx(whole["copy_last"][k], rel=1e-6)
        assert whole["pred_other_actions"][k] == pytest.approx(whole["pred"][k], rel=1e-6)


def test_the_headline_is_one_step_psnr_against_copy_last():
    task = WorldTask(make_cfg(), {"action_dim": 3})
    results = evaluate(task, Splits(train={}, val={}, test=KnownFrames(known_frames(4)), info={}), make_cfg(), {}).results
    assert headline(results) == {"metric": "1-step PSNR (dB)", "value": results["pred"]["1"]["psnr"], "baseline": "copy-last",
                                 "baseline_value": results["copy_last"]["1"]["psnr"], "higher_is_better": True}
