"""The free-running evaluation against independent references, its predictions in batches, and the headline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.recipes import get_recipe, load_recipe_config


@pytest.fixture
def loaded(seqgen_config):
    recipe = get_recipe("seqgen")
    cfg = load_recipe_config(seqgen_config)[1]
    splits = recipe.load_data(cfg, lambda m: None)
    return recipe, cfg, splits


def test_evaluation_matches_independent_references(loaded, monkeypatch):
    from sklearn.neighbors import KNeighborsRegressor

    from kiln.recipes.seqgen.evaluation import (balanced_holdout, choose_k, discriminative_score, evaluate, generate,
                                                nearest_neighbour_mean, spectral_distance)

    recipe, cfg, splits = loaded
    train, val, test = splits.train, splits.val, splits.test
    k, maes = choose_k(train, val)
    assert maes[k] == min(maes.values())
    reference = KNeighborsRegressor(n_neighbors=3).fit(train["params"].numpy(), train["y"].reshape(len(train["y"]), -1).numpy())
    np.testing.assert_allclose(nearest_neighbour_mean(train["params"], train["y"], test["params"], 3).reshape(len(test["y"]), -1),
                               reference.predict(test["params"].numpy()), atol=1e-5)
    assert spectral_distance(test["y"], test["y"]) == 0.0
    assert spectral_distance(torch.zeros_like(test["y"]), test["y"]) == pytest.approx(1.0)
    real = torch.cat([train["y"], val["y"]])
    assert discriminative_score(real[:20], real[20:]) <= 0.25        # two halves of the same data: chance level
    assert discriminative_score(real.mean(0).expand(20, -1, -1), real[20:]) >= 0.3   # one sequence for every pair is told apart
    for num_true, num_pred in ((100, 100), (20, real.shape[0] - 20), (3, 1)):
        fit, held = balanced_holdout(num_true, num_pred)
        assert (held < num_true).sum() == (held >= num_true).sum() == max(1, min(num_true, num_pred) // 5)
        assert sorted(torch.cat([fit, held]).tolist()) == list(range(num_true + num_pred))
    task = recipe.build_task(cfg, splits.info)
    monkeypatch.setattr("kiln.recipes.seqgen.evaluation.DISCRIMINATOR_STEPS", 5)  # checked at full size above
    results = evaluate(task, splits, cfg, {}).results
    pred = generate(task, test["params"], 64)
    assert results["free_running"]["mae"] == pytest.approx((pred - test["y"]).abs().mean().item(), rel=1e-4)
    assert results["knn_k"] == k
    mean = train["y"].mean(0)
    assert results["mean_sequence"]["mae"] == pytest.approx((mean - test["y"]).abs().mean().item(), rel=1e-4)


def test_generation_in_batches_is_one_free_running_pass(loaded):
    from kiln.recipes.seqgen.evaluation import generate

    recipe, cfg, splits = loaded
    task = recipe.build_task(cfg, splits.info)
    params = splits.test["params"]
    pred = generate(task, params, batch_size=3)      # 8 test sequences: batches of 3, 3 and 2
    with torch.no_grad():
        whole = task.model(params)
    assert pred.shape == (8, 151, 5) and pred.dtype == torch.float32 and not task.training
    torch.testing.assert_close(pred, whole, atol=1e-6, rtol=1e-5)


def test_headline_is_free_running_mae_against_knn(loaded, monkeypatch):
    from sklearn.neighbors import KNeighborsRegressor

    recipe, cfg, splits = loaded
    monkeypatch.setattr("kiln.recipes.seqgen.evaluation.DISCRIMINATOR_STEPS", 5)
    results = recipe.evaluate(recipe.build_task(cfg, splits.info), splits, cfg, {}).results
    headline = recipe.headline(results)
    assert headline == {"metric": "free-running test MAE", "value": results["free_running"]["mae"], "baseline": "k-NN",
                        "baseline_value": results["knn"]["mae"], "higher_is_better": False}
    train, test = splits.train, splits.test
    knn = KNeighborsRegressor(n_neighbors=results["knn_k"]).fit(train["params"].numpy(), train["y"].flatten(1).numpy())
    reference_mae = np.abs(knn.predict(test["params"].numpy()) - test["y"].flatten(1).numpy()).mean()
    assert headline["baseline_value"] == pytest.approx(reference_mae, abs=1e-5)
    assert headline["value"] > headline["baseline_value"]   # an untrained generator is far behind k-NN
