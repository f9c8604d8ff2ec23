"""`kiln evaluate RUN --data DIR` on the toy recipe read from dataset directories: results and report beside the
originals, never over them; a dataset the model does not fit is one line and exit 2, through the recipe's
data_mismatch where it has one and through the model's own shape error where it has not."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Literal

import pytest
import torch

from kiln import recipes
from kiln.cli import main
from kiln.engine.task import Evaluation, Splits

PACKAGE = "kiln_test_filetoy"


def write_dataset(out: Path, dim: int, seed: int, size: int = 64) -> Path:
    """A toy dataset directory: splits.pt (x, y per split, y = x . w + noise) and dataset.json."""
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1, 1, dim)
    splits = {}
    for name in ("train", "val", "test"):
        x = torch.randn(size, dim, generator=g)
        splits[name] = {"x": x, "y": x @ w + 0.1 * torch.randn(size, generator=g)}
    out.mkdir(parents=True)
    torch.save(splits, out / "splits.pt")
    (out / "dataset.json").write_text(json.dumps({"dim": dim, "seed": seed}))
    return out


def load_data(cfg, log):
    from kiln.recipes import dataset_info

    info = dataset_info(Path(cfg.data.dir), "filetoy", "write_dataset(DIR)")
    splits = torch.load(Path(cfg.data.dir) / "splits.pt", weights_only=True)
    return Splits(splits["train"], splits["val"], splits["test"], info={"dim": info["dim"]})


def evaluate(task, splits, cfg, options):
    """Test MSE, and the MSE of predicting the test mean (the baseline in the same run)."""
    x, y = splits.test["x"], splits.test["y"]
    error = task.predict(x) - y
    return Evaluation({"mse": (error ** 2).mean().item(), "mean_mse": ((y - y.mean()) ** 2).mean().item()})


def headline(results):
    return {"metric": "MSE", "value": results["mse"], "baseline": "test mean", "baseline_value": results["mean_mse"],
            "higher_is_better": False}


@pytest.fixture
def filetoy(toy, monkeypatch):
    """The toy recipe reading a dataset directory, registered as `filetoy` (package kiln_test_filetoy)."""
    data_class = toy.config.model_fields["data"].annotation

    class FileToyData(data_class):
        dir: str = "data/filetoy"
        generate: dict | None = None

    class FileToyConfig(toy.config):
        recipe: Literal["filetoy"] = "filetoy"
        data: FileToyData = FileToyData()

    recipe = dataclasses.replace(toy, name="filetoy", config=FileToyConfig, load_data=load_data, evaluate=evaluate,
                                 headline=headline, package=PACKAGE)
    package = types.ModuleType(PACKAGE)
    package.RECIPE = recipe
    monkeypatch.setitem(sys.modules, PACKAGE, package)
    monkeypatch.setitem(recipes.RECIPES, "filetoy", PACKAGE)
    return recipe


@pytest.fixture
def trained(filetoy, run_toy, tmp_path):
    """A filetoy run trained on a 4-feature dataset."""
    data = write_dataset(tmp_path / "data" / "train4", dim=4, seed=0)
    cfg = filetoy.config.model_validate({"name": "toy", "data": {"dir": str(data), "dim": 4}, "train": {
        "batch_size": 16, "max_epochs": 3, "lr": 0.05, "optimizer": "sgd", "loggers": [], "threads": 1, "precision": "32"}})
    return run_toy("run", cfg, recipe=filetoy)[1]


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_evaluate_data_writes_beside_the_originals_and_never_over_them(trained, tmp_path, capsys):
    other = write_dataset(tmp_path / "data" / "city2", dim=4, seed=7)
    before = files_of(trained)
    assert main(["evaluate", str(trained), "--data", str(other)]) == 0
    assert "test_results_city2.json" in capsys.readouterr().out
    after = files_of(trained)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the run changed
    assert sorted(set(after) - set(before)) == ["report_city2/config.yaml", "report_city2/headline.json",
                                                "report_city2/metrics.json", "report_city2/report.json",
                                                "report_city2/report.md", "test_results_city2.json"]

    # the numbers: the trained model on the other dataset's test split, computed here independently
    weights = torch.load(trained / "best_model.pt", weights_only=True)["state_dict"]
    test = torch.load(other / "splits.pt", weights_only=True)["test"]
    pred = test["x"] @ weights["head.weight"][0] + weights["head.bias"][0]
    results = json.loads((trained / "test_results_city2.json").read_text())
    assert results["mse"] == pytest.approx(((pred - test["y"]) ** 2).mean().item(), rel=1e-5)
    assert results["data_dir"] == str(other)
    report = (trained / "report_city2" / "report.md").read_text()
    assert f"| MSE | {results['mse']:.4f} | {results['mean_mse']:.4f} |" in report and f"dir: {other}" in report

    assert main(["evaluate", str(trained), "--data", str(other)]) == 2  # again: refused, nothing overwritten
    err = capsys.readouterr().err.strip()
    assert err == (f"kiln: error: '{trained / 'test_results_city2.json'}' already exists and kiln evaluate --data never "
                   f"overwrites; pass --name for another name")
    assert files_of(trained) == after
    assert main(["evaluate", str(trained), "--data", str(other), "--name", "city2b"]) == 0
    assert json.loads((trained / "test_results_city2b.json").read_text()) == results


def test_a_dataset_that_does_not_exist_or_is_another_recipe_s_is_one_line(trained, tiny_data_dir, tmp_path, capsys):
    before = files_of(trained)
    assert main(["evaluate", str(trained), "--data", str(tmp_path / "missing")]) == 2
    assert "is not a directory; kiln evaluate never makes data" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(trained), "--data", str(tmp_path / "empty")]) == 2
    assert "has no dataset.json, so it is not a filetoy dataset" in capsys.readouterr().err
    assert main(["evaluate", str(trained), "--data", str(tiny_data_dir)]) == 2  # nav's: dataset.json, no splits.pt
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kiln: error: --data '{tiny_data_dir}' could not be read as a filetoy dataset")
    assert main(["evaluate", str(trained), "--data", str(tmp_path / "missing"), "--name", "../x"]) == 2
    assert "is not a plain file name" in capsys.readouterr().err
    assert files_of(trained) == before


def test_a_shape_the_model_does_not_fit_is_one_line_from_the_model(trained, tmp_path, capsys):
    wide = write_dataset(tmp_path / "data" / "wide", dim=5, seed=1)
    assert main(["evaluate", str(trained), "--data", str(wide)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kiln: error: --data '{wide}' does not fit the model of '{trained}': "
                                               f"the model failed on it (RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert not (trained / "test_results_wide.json").exists() and not (trained / "report_wide").exists()
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_recipe_s_data_mismatch_names_the_mismatch(trained, tmp_path, capsys, monkeypatch):
    calls = []

    def data_mismatch(cfg, trained_info, info):
        calls.append((cfg.recipe, trained_info, info))
        if info["dim"] != trained_info["dim"]:
            return f"the model reads {trained_info['dim']} features, the dataset has {info['dim']}"
        return None

    evaluation = types.ModuleType(f"{PACKAGE}.evaluation")
    evaluation.data_mismatch = data_mismatch
    monkeypatch.setitem(sys.modules, evaluation.__name__, evaluation)
    wide = write_dataset(tmp_path / "data" / "wide", dim=6, seed=1)
    assert main(["evaluate", str(trained), "--data", str(wide)]) == 2
    assert capsys.readouterr().err.strip() == (f"kiln: error: --data '{wide}' does not fit the model of '{trained}': "
                                               f"the model reads 4 features, the dataset has 6")
    assert calls == [("filetoy", {"dim": 4}, {"dim": 6})]
    fits = write_dataset(tmp_path / "data" / "fits", dim=4, seed=2)
    assert main(["evaluate", str(trained), "--data", str(fits)]) == 0
    assert (trained / "test_results_fits.json").is_file() and len(calls) == 2


def test_data_is_one_evaluation_and_name_needs_it(trained, capsys):
    assert main(["evaluate", str(trained), "--name", "x"]) == 2
    assert "--name names the files of an evaluation on --data DIR" in capsys.readouterr().err
