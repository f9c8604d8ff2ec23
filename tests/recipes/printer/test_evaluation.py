"""The test evaluation against independent references (scikit-learn's metrics, the model called on the whole
split), on a real results dict, and its headline."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, r2_score

from kiln.recipes import get_recipe, load_recipe_config
from kiln.recipes.printer.evaluation import evaluate, predict_windows, regression_metrics


def test_regression_metrics_are_sklearns():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(500, 2)) * np.array([0.01, 0.03])
    pred = target + rng.normal(size=(500, 2)) * 0.005
    m = regression_metrics(pred, target)
    assert m["r2"] == pytest.approx(r2_score(target, pred, multioutput="variance_weighted"), rel=1e-9)
    assert m["mae"] == pytest.approx(mean_absolute_error(target, pred), rel=1e-9)
    assert m["rmse"] == pytest.approx(np.sqrt(((pred - target) ** 2).mean()), rel=1e-9)
    for k, axis in enumerate("xy"):
        assert m["per_axis"][axis]["r2"] == pytest.approx(r2_score(target[:, k], pred[:, k]), rel=1e-9)
        assert m["per_axis"][axis]["mae"] == pytest.approx(mean_absolute_error(target[:, k], pred[:, k]), rel=1e-9)
    quartiles = statistics.quantiles(np.abs(pred - target).ravel().tolist(), n=100, method="inclusive")
    assert m["percentiles"]["50"] == pytest.approx(quartiles[49]) and m["percentiles"]["99"] == pytest.approx(quartiles[98])


@pytest.fixture(scope="module")
def evaluated(printer_config_module):
    """An untrained LSTM (and its ridge FIR, fitted) evaluated on the tiny dataset's held-out bearing5."""
    recipe, cfg = load_recipe_config(printer_config_module)
    recipe.prepare_data(cfg, lambda message: None)
    splits = recipe.load_data(cfg, lambda message: None)
    torch.manual_seed(0)
    task = recipe.build_task(cfg, splits.info)
    task.fit_data(splits.train)
    with torch.no_grad():
        evaluation = evaluate(task.eval(), splits, cfg, {})
    return task, splits, evaluation


def test_window_predictions_are_the_models_on_the_whole_split(evaluated):
    task, splits, evaluation = evaluated
    x = splits.test["input_features"]
    with torch.no_grad():
        whole, ridge = task.predict_last(x).numpy(), task.ridge(x).numpy()
    got = predict_windows(task, x, batch_size=7)  # batches that do not divide the split
    np.testing.assert_allclose(got["pred"], whole, atol=1e-6)
    np.testing.assert_allclose(got["ridge"], ridge, atol=1e-6)
    np.testing.assert_allclose(evaluation.outputs["pred"], whole, atol=1e-6)


def test_the_headline_is_r2_against_the_ridge_fir_on_the_same_windows(evaluated):
    task, splits, evaluation = evaluated
    results = evaluation.results
    target = splits.test["targets"].numpy()
    with torch.no_grad():
        ridge = task.ridge(splits.test["input_features"]).numpy()
        pred = task.predict_last(splits.test["input_features"]).numpy()
    headline = get_recipe("printer").headline(results)
    assert headline == {"metric": "test R2", "value": results["r2"], "baseline": "ridge FIR",
                        "baseline_value": results["ridge_r2"], "higher_is_better": True}
    assert headline["baseline_value"] == pytest.approx(r2_score(target, ridge, multioutput="variance_weighted"), abs=1e-5)
    assert headline["value"] == pytest.approx(r2_score(target, pred, multioutput="variance_weighted"), abs=1e-5)
    assert headline["baseline_value"] > headline["value"]  # an untrained LSTM is far behind the fitted FIR
    assert results["test_models"] == ["bearing5"] and np.isfinite(results["stream_r2"])
