"""The traffic recipe through the engine: train -> evaluate on the simulated city, baselines, the CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kiln.engine.evaluate import evaluate_run
from kiln.engine.fit import fit
from kiln.recipes import get_recipe, load_recipe_config
from kiln.errors import KilnError
from kiln.recipes.traffic.evaluation import predict_split
from kiln.recipes.traffic.metrics import interval_coverage, spread_scale_for_coverage
from kiln.recipes.traffic.task import build_task


def load_config(path, overrides=()):
    return load_recipe_config(path, list(overrides))[1]


def train(path, run_dir, overrides=()):
    recipe, cfg = load_recipe_config(path, list(overrides))
    return fit(cfg, recipe, run_dir)


def point_model(arch, **keys):
    """The override that makes traffic_config's model a point baseline with the same windows."""
    return "model=" + json.dumps({"arch": arch, "seq_len": 12, "pred_len": 4, **keys})


GUIDE_COLUMNS = ["epoch", "train_loss", "train_mae", "train_rmse", "val_loss", "val_mae", "val_rmse", "val_mape", "val_coverage_80"]


def test_stmgt_trains_and_evaluates_end_to_end(traffic_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = train(traffic_config, run_dir)
    out = capsys.readouterr().out
    assert "Train Metrics -> MAE:" in out and "COVERAGE@80:" in out and "Number of edges: 144" in out
    with open(run_dir / "training_history.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == GUIDE_COLUMNS and len(rows) == 3
    history = json.loads((run_dir / "history.json").read_text())
    assert history["train_loss"][1] < history["train_loss"][0]
    assert all(np.isfinite(history["grad_norm_mean"])) and "val_mix_w1" in history
    for key in ("mae", "rmse", "mape", "r2", "coverage_80", "loss", "crps", "calibration", "per_horizon", "per_node", "references",
                "pit_histogram", "tail_coverage", "spread_scale", "uncalibrated"):
        assert key in results
    assert sum(results["pit_histogram"]) == pytest.approx(1) and len(results["spread_scale"]) == 4
    assert results["calibration"]["0.8"] == results["coverage_80"]
    assert list(results["per_horizon"]) == ["15min", "30min", "45min", "60min"]
    assert len(results["per_node"]["mae"]) == 62
    assert 0 <= results["coverage_80"] <= 1 and results["mae"] > 0
    assert sum(c["share"] for c in results["weather_conditions"].values()) == pytest.approx(1)
    for name in ("forecasts.png", "reliability.png", "pit_histogram.png", "error_by_horizon.png", "node_error_map.png",
                 "mixture_weights.png", "report.md"):
        assert (run_dir / "report" / name).is_file(), name
    weights = torch.load(run_dir / "best_model.pt", weights_only=True)
    assert weights["data_info"]["speed_mean"] == pytest.approx(weights["state_dict"]["model.speed_mean"].item())
    again = evaluate_run(run_dir, get_recipe("traffic"), load_config(run_dir / "config.yaml"))
    assert again["mae"] == pytest.approx(results["mae"], rel=1e-5)


def test_evaluation_metrics_match_a_direct_computation(traffic_config):
    cfg = load_config(traffic_config)
    recipe = get_recipe("traffic")
    splits = recipe.load_data(cfg, lambda m: None)
    task = recipe.build_task(cfg, splits.info).eval()
    results = recipe.evaluate(task, splits, cfg, {}).results
    with torch.no_grad():
        out = task.outputs(splits.test)
    weights = torch.softmax(out["logits"], -1)
    point = (weights * out["means"]).sum(-1) * task.speed_std + task.speed_mean
    y = splits.test["y"]
    assert results["mae"] == pytest.approx((point - y).abs().mean().item(), rel=1e-4)
    assert results["rmse"] == pytest.approx(((point - y) ** 2).mean().sqrt().item(), rel=1e-4)
    last = splits.test["x"][:, :, -1:] * task.speed_std + task.speed_mean
    persistence_mae = (last - y).abs().mean().item()
    assert results["references"]["persistence"]["mae"] == pytest.approx(persistence_mae, rel=1e-4)
    headline = recipe.headline(results)
    assert headline == {"metric": "test MAE (km/h)", "value": pytest.approx((point - y).abs().mean().item(), rel=1e-4),
                        "baseline": "persistence", "baseline_value": pytest.approx(persistence_mae, rel=1e-4),
                        "higher_is_better": False}


@pytest.mark.parametrize("protocol", ["chronological", "tgcn"])
def test_missing_readings_are_left_out_of_every_test_metric(traffic_config, city_dir, tmp_path, protocol):
    """A city with 5% of its speeds missing: they are inputs (imputed), never targets, in every figure."""
    import shutil

    holed = tmp_path / "holed"
    shutil.copytree(city_dir, holed)
    records = pd.read_parquet(holed / "traffic.parquet")
    records.loc[np.random.default_rng(0).random(len(records)) < 0.05, "speed_kmh"] = np.nan
    records.to_parquet(holed / "traffic.parquet", index=False)
    cfg = load_config(traffic_config, [f"data.dir={holed}", f"data.protocol={protocol}"])
    recipe = get_recipe("traffic")
    splits = recipe.load_data(cfg, lambda m: None)
    task = recipe.build_task(cfg, splits.info).eval()
    results = recipe.evaluate(task, splits, cfg, {}).results
    y = splits.test["y"]
    inside = torch.isfinite(y).any(1).all(-1)  # the windows whose targets lie inside the data
    point = predict_split(task, splits.test, 64)["point"][inside]
    y = y[inside]
    scored = torch.isfinite(y)
    assert results["missing_targets"] == int((~scored).sum()) > 0 and results["samples"] == int(inside.sum())
    assert results["mae"] == pytest.approx((point - y)[scored].abs().mean().item(), rel=1e-4)
    last = (splits.test["x"][:, :, -1:] * task.speed_std + task.speed_mean)[inside].expand_as(y)
    assert results["references"]["persistence"]["mae"] == pytest.approx((last - y)[scored].abs().mean().item(), rel=1e-4)
    for figure in (results["coverage_80"], results["crps"], *results["per_node"]["mae"],
                   *(step["mae"] for step in results["per_horizon"].values())):
        assert math.isfinite(figure)
    if protocol == "tgcn":
        assert all(math.isfinite(v) for row in results["tgcn_protocol"].values() for v in row.values())


def test_spread_scale_is_fitted_on_validation_only(traffic_config, tmp_path):
    """The saved spread scale is what calibrate() fits on the validation split: there the calibrated 80% interval
    covers 80% at every step and the point forecast is unchanged; the test split (shifted by 30 km/h here, which
    would call for a much wider mixture) never reaches the fit."""
    recipe = get_recipe("traffic")
    shifted = dataclasses.replace(recipe, load_data=lambda cfg, log: shift_test(recipe.load_data(cfg, log)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config(traffic_config, ["train.max_epochs=1"])
    fit(cfg, shifted, run_dir)
    splits = recipe.load_data(cfg, lambda m: None)
    task = recipe.build_task(cfg, splits.info)
    task.load_state_dict(torch.load(run_dir / "best_model.pt", weights_only=True)["state_dict"])
    saved = task.model.spread_scale.clone()
    task.eval()
    task.calibrate(splits.val)
    torch.testing.assert_close(task.model.spread_scale, saved)
    raw, calibrated = (predict_split(task, splits.val, 256, calibrated=c) for c in (False, True))
    torch.testing.assert_close(calibrated["point"], raw["point"])
    for h in range(4):
        args = [calibrated[k][:, :, h] for k in ("means", "stds", "logits")]
        assert interval_coverage(*args, splits.val["y"][:, :, h], 0.8) == pytest.approx(0.8, abs=2e-3)
    test = shift_test(splits).test
    test_pred = predict_split(task, test, 256, calibrated=False)
    fitted_on_test = spread_scale_for_coverage(test_pred["means"], test_pred["stds"], test_pred["logits"], test["y"])
    assert (fitted_on_test > 2 * saved).all()


def test_test_loss_is_the_validation_step_on_the_test_split(traffic_config):
    """evaluate() takes the test loss from its one pass over the test windows (batches of 7 here); the reference is
    the validation step on the whole split as one batch (every simulated window is complete, so the two agree)."""
    recipe = get_recipe("traffic")
    cfg = load_config(traffic_config, ["train.eval_batch_size=7"])
    splits = recipe.load_data(cfg, lambda m: None)
    task = recipe.build_task(cfg, splits.info)
    task.eval()
    assert torch.isfinite(splits.test["y"]).all()
    results = recipe.evaluate(task, splits, cfg, {}).results
    with torch.no_grad():
        expected = task.validation_step(splits.test)["loss"].item()
    assert results["loss"] == pytest.approx(expected, rel=1e-4)


def shift_test(splits):
    splits.test = {**splits.test, "y": splits.test["y"] + 30.0}
    return splits


def test_historical_average_is_fitted_in_closed_form(traffic_config, tmp_path, city_dir):
    run_dir = tmp_path / "ha"
    run_dir.mkdir()
    results = train(traffic_config, run_dir, [point_model("historical_average")])
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [0] and "val_mae" in history
    # independent reference: pandas mean per (time-of-day, node) over the training steps
    weights = torch.load(run_dir / "best_model.pt", weights_only=True)
    info = weights["data_info"]
    frame = pd.read_parquet(city_dir / "traffic.parquet")
    steps = np.sort(frame["timestamp"].unique())
    span = info["seq_len"] + info["pred_len"]
    train_steps = steps[info["bounds"]["train"][0]:info["bounds"]["train"][1] - span + 1]  # steps that start a training window
    rows = frame[frame["timestamp"].isin(train_steps)]
    slot = rows["timestamp"].dt.hour * 4 + rows["timestamp"].dt.minute // 15
    expected = rows.groupby([slot, rows["node_id"]])["speed_kmh"].mean().unstack().to_numpy()
    table = weights["state_dict"]["model.table"].numpy() * info["speed_std"] + info["speed_mean"]
    np.testing.assert_allclose(table, expected, rtol=1e-4)
    assert results["mae"] == pytest.approx(results["references"]["historical_average"]["mae"], rel=1e-4)


@pytest.mark.parametrize("arch", ["lstm", "graphwavenet", "astgcn", "tgcn"])
def test_point_baselines_train_in_the_same_harness(traffic_config, tmp_path, arch):
    run_dir = tmp_path / arch
    run_dir.mkdir()
    small = {"residual_channels": 8, "dilation_channels": 8, "skip_channels": 16, "end_channels": 16} if arch == "graphwavenet" else {}
    results = train(traffic_config, run_dir, [point_model(arch, **small), "train.max_epochs=1"])
    assert results["model"] == arch and "coverage_80" not in results and results["mae"] > 0
    with open(run_dir / "training_history.csv") as f:
        header = next(csv.reader(f))
    assert header == GUIDE_COLUMNS


def test_stmgt_trains_on_per_segment_records(traffic_config, tmp_path):
    from kiln.recipes.traffic.data import write_dataset
    from kiln.recipes.traffic.sim import segment_records, simulate_city

    records, nodes, edges = simulate_city(days=4, seed=5)
    data_dir = tmp_path / "segments"
    write_dataset(data_dir, segment_records(records, edges, seed=5), nodes, None, {"source": "test"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = train(traffic_config, run_dir, [f"data.dir={data_dir}", "train.max_epochs=1"])
    assert len(results["per_node"]["mae"]) == 62 and 0 < results["mae"] < results["references"]["historical_average"]["mae"] * 2
    assert (run_dir / "report" / "node_error_map.png").is_file()  # nodes.csv matched to the model's nodes by node_id


def test_weather_ablation_and_collapse_warning(traffic_config):
    cfg = load_config(traffic_config, ["model.use_weather=false"])
    info = get_recipe("traffic").load_data(cfg, lambda m: None).info
    assert info["has_weather"]
    assert build_task(cfg, info).model.weather_encoder is None
    task = build_task(load_config(traffic_config), info)
    warnings = task.epoch_warnings({"val_mix_w0": 0.9, "val_mix_w1": 0.1})
    assert len(warnings) == 1 and "component 1 carries 90%" in warnings[0] and "diversity_weight" in warnings[0]
    assert task.epoch_warnings({"val_mix_w0": 0.5, "val_mix_w1": 0.5}) == []


def test_kiln_data_traffic_cli(tmp_path):
    out = tmp_path / "city"
    done = subprocess.run([sys.executable, "-m", "kiln", "data", "traffic", "--simulate", "--per-segment", "--days", "3",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "62 nodes, 144 edges" in done.stdout and "per-segment records" in done.stdout
    frame = pd.read_parquet(out / "traffic.parquet")
    assert {"node_a_id", "node_b_id", "speed_kmh", "precipitation_mm"} <= set(frame.columns) and len(frame) == 3 * 96 * 144
    assert not (out / "edges.csv").exists() and json.loads((out / "dataset.json").read_text())["per_segment"]
    again = subprocess.run([sys.executable, "-m", "kiln", "data", "traffic", "--simulate", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "kiln", "data", "traffic", "--los-loop", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "los_speed.csv" in bad.stderr


@pytest.mark.parametrize("source", [["--simulate"], ["--los-loop", "LOS"]])
def test_kiln_data_traffic_out_under_a_file_is_one_line(tmp_path, capsys, source):
    from kiln.cli import main

    los = tmp_path / "los"
    los.mkdir()
    (los / "los_speed.csv").write_text("a,b\n1,2\n3,4\n")
    (los / "los_adj.csv").write_text("0,1\n1,0\n")
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / "city"
    assert main(["data", "traffic", *[str(los) if a == "LOS" else a for a in source], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{tmp_path / 'taken'}' is a file, not a directory" in err


def test_loss_is_the_documented_sum(traffic_config):
    """loss = mixture NLL + w_mse MSE + w_mae MAE (+ diversity, entropy and usage terms in training), in normalised units."""
    cfg = load_config(traffic_config, ["model.mse_loss_weight=0.4", "model.mae_loss_weight=1.0",
                                       "model.diversity_weight=0.05", "model.entropy_weight=0.01", "model.usage_weight=0.2"])
    recipe = get_recipe("traffic")
    splits = recipe.load_data(cfg, lambda m: None)
    task = recipe.build_task(cfg, splits.info).eval()
    batch = {k: v[:16] for k, v in splits.val.items()}
    with torch.no_grad():
        out = task.outputs(batch)
        target = (batch["y"] - task.speed_mean) / task.speed_std
        mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=out["logits"]),
                                                        torch.distributions.Normal(out["means"], out["stds"]))
        nll = -mixture.log_prob(target).mean()
        error = mixture.mean - target
        expected = nll + 0.4 * (error ** 2).mean() + 1.0 * error.abs().mean()
        weights = torch.softmax(out["logits"], -1)
        entropy = -(weights * weights.log()).sum(-1).mean()
        usage = weights.reshape(-1, weights.shape[-1]).mean(0)
        usage_kl = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=usage),
                                                     torch.distributions.Categorical(logits=torch.zeros_like(usage)))
        validation, training = task.validation_step(batch), task.training_step(batch)
    assert validation["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert validation["nll"].item() == pytest.approx(nll.item(), rel=1e-4)
    regularisers = 0.05 * training["diversity"] + 0.01 * entropy + 0.2 * usage_kl
    assert training["loss"].item() == pytest.approx((expected + regularisers).item(), rel=1e-4)
    assert -1 <= training["diversity"].item() <= 0


def test_a_city_made_with_other_settings_warns(traffic_config, city_dir):
    cfg = load_config(traffic_config, ["data.generate={days: 3, interval_minutes: 15, seed: 5}"])
    lines = []
    get_recipe("traffic").prepare_data(cfg, lines.append)
    assert lines == [f"Warning: using existing {city_dir}, made with days=4 (config: 3); delete it or change data.dir to regenerate"]


def test_a_missing_dataset_names_the_command_that_makes_it(traffic_config, tmp_path):
    cfg = load_config(traffic_config, [f"data.dir={tmp_path / 'nowhere'}"])
    with pytest.raises(KilnError, match="kiln data traffic --simulate --out .*nowhere or kiln data traffic --los-loop PATH"):
        get_recipe("traffic").prepare_data(cfg, lambda m: None)
    assert not (tmp_path / "nowhere").exists()


def test_stmgt_exports_in_every_format_in_the_data_unit(traffic_config, tmp_path):
    import onnxruntime

    from kiln.engine.export import PARITY, export_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(traffic_config, run_dir, ["train.max_epochs=1"])
    recipe, cfg = get_recipe("traffic"), load_config(run_dir / "config.yaml")
    result = export_run(run_dir, recipe, cfg, "onnx")
    assert result["max_abs_diff"] <= PARITY and result["inputs"] == [[62, 12], [16], [16], [16, 3]]
    # the exported graph takes raw km/h and weather and answers in km/h, like STMGT.predict
    splits = recipe.load_data(cfg, lambda m: None)
    task = build_task(cfg, splits.info).eval()
    task.load_state_dict(torch.load(run_dir / "best_model.pt", weights_only=True)["state_dict"])
    test = {k: v[:5] for k, v in splits.test.items()}
    raw_x = test["x"] * task.speed_std + task.speed_mean
    raw_weather = test["weather"] * task.model.weather_std + task.model.weather_mean
    session = onnxruntime.InferenceSession(result["path"])
    means = session.run(None, dict(zip([i.name for i in session.get_inputs()],
                                       [raw_x.numpy(), test["hour"].numpy(), test["dow"].numpy(), raw_weather.numpy()])))[0]
    expected = task.model.predict(raw_x, x_weather=raw_weather, temporal={"hour": test["hour"], "dow": test["dow"]})["means"]
    np.testing.assert_allclose(means, expected.numpy(), atol=1e-4)
    for fmt in ("torchscript", "safetensors"):  # checked at batch sizes 1, 3 and 16 against PyTorch
        assert export_run(run_dir, recipe, cfg, fmt)["max_abs_diff"] <= PARITY


# ---------------------------------------------------------------- model: one architecture, its own keys

@pytest.mark.parametrize("model, message", [
    ({"arch": "lstm", "num_heads": 2}, r"'model\.num_heads' \(model\.arch 'lstm' has no num_heads\); valid keys here: .*embedding_dim$"),
    ({"arch": "historical_average", "hidden_dim": 8}, r"'model\.hidden_dim' \(model\.arch 'historical_average' has no hidden_dim\)"),
    ({"arch": "stmgt", "point_loss": "mse"}, r"'model\.point_loss' \(model\.arch 'stmgt' has no point_loss\)"),
    ({"arch": "tgcn", "baseline": {"hidden_dim": 8}}, r"'model\.baseline'; valid keys here: .*hidden_dim, self_loop$")])  # once untyped
def test_a_key_the_architecture_ignores_is_a_one_line_error(traffic_config, model, message):
    with pytest.raises(KilnError, match="unknown config key " + message) as caught:
        load_config(traffic_config, ["model=" + json.dumps(model)])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name, expected", [
    ("lstm", {"hidden_dim": 64, "num_layers": 2, "dropout": 0.1, "embedding_dim": 16}),
    ("graphwavenet", {"residual_channels": 16, "dilation_channels": 16, "skip_channels": 64, "end_channels": 128, "blocks": 4,
                      "layers": 2, "kernel_size": 2, "dropout": 0.3, "adaptive": True, "embedding_dim": 10}),
    ("astgcn", {"nb_block": 2, "cheb_k": 3, "nb_chev_filter": 64, "nb_time_filter": 64, "time_strides": 1}),
    ("tgcn", {"hidden_dim": 64, "self_loop": 2.0})])
def test_shipped_baseline_configs_give_their_constructors_the_same_arguments(name, expected):
    """Each shipped baseline's keyword arguments: the ones its config set (once an untyped model.baseline dict) and
    the constructor's own defaults for the rest."""
    import inspect
    from pathlib import Path

    from kiln.recipes.traffic.baselines import BASELINES
    from kiln.recipes.traffic.task import POINT_SETTINGS

    cfg = load_config(Path(__file__).resolve().parents[3] / "configs" / "traffic" / f"{name}.yaml")
    assert cfg.model.model_dump(exclude=POINT_SETTINGS) == expected
    defaults = {k: p.default for k, p in inspect.signature(BASELINES[name]).parameters.items()
                if p.default is not inspect.Parameter.empty and k != "adjacency"}
    assert set(defaults) == set(expected)  # every constructor argument has its key, and no key is extra


def test_baseline_keys_reach_their_models(traffic_config):
    from kiln.recipes.traffic.baselines import gcn_propagation

    info = get_recipe("traffic").load_data(load_config(traffic_config), lambda m: None).info

    def built(arch, **keys):
        return build_task(load_config(traffic_config, [point_model(arch, **keys)]), info).model

    assert built("graphwavenet", residual_channels=8, blocks=1).start_conv.out_features == 8
    assert len(built("graphwavenet", blocks=1, layers=3).dilations) == 3
    assert built("astgcn", cheb_k=2, nb_block=1).blocks[0].cheb_conv.polynomials.shape[0] == 2
    assert built("lstm", num_layers=1, hidden_dim=12).lstm.hidden_size == 12
    # T-GCN's propagation from the road graph, each node keeping its 2 heaviest incoming edges, with self loop 2
    tgcn = built("tgcn", self_loop=2.0, max_neighbors=2)
    edges = torch.tensor(info["edge_index"]).view(2, -1)
    adjacency = torch.zeros(62, 62)
    adjacency[edges[0], edges[1]] = torch.tensor(info["edge_weight"])
    assert ((adjacency > 0).sum(0) > 2).any() and not ((tgcn.propagation > 0).fill_diagonal_(False).sum(1) > 2).any()
    full = built("tgcn", self_loop=2.0)
    torch.testing.assert_close(full.propagation, gcn_propagation(adjacency, 2.0))


def test_kiln_evaluate_data_refuses_a_city_the_model_cannot_take(traffic_config, city_dir, tmp_path, capsys):
    """kiln evaluate RUN --data DIR on another dataset: the same network at another interval is refused before the
    model runs; a different node count, detector order or road graph is named by data_mismatch."""
    from kiln.cli import main
    from kiln.recipes.traffic.config import CityGenerator
    from kiln.recipes.traffic.data import simulate_dataset
    from kiln.recipes.traffic.evaluation import data_mismatch

    run_dir = tmp_path / "run"
    assert main(["train", str(traffic_config), "train.max_epochs=1", "--run-dir", str(run_dir)]) == 0
    five_minutes = tmp_path / "city5"
    simulate_dataset(five_minutes, CityGenerator(days=4, seed=5, interval_minutes=5), lambda message: None)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", str(five_minutes)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "steps of 15 minutes" in err and "5-minute steps" in err
    assert not (run_dir / "test_results_city5.json").exists() and not (run_dir / "report_city5").exists()

    _, cfg = load_recipe_config(traffic_config, [])
    info = get_recipe("traffic").load_data(cfg, lambda m: None).info
    assert data_mismatch(cfg, info, info) is None
    assert "62-node network and this dataset has 61 nodes" in data_mismatch(cfg, info, {**info, "num_nodes": 61})
    swapped = {**info, "node_ids": [info["node_ids"][1], info["node_ids"][0], *info["node_ids"][2:]]}
    assert data_mismatch(cfg, info, swapped).startswith("node 0 is detector")
    fewer_edges = {**info, "edge_index": [row[1:] for row in info["edge_index"]], "edge_weight": info["edge_weight"][1:],
                   "num_edges": info["num_edges"] - 1}
    assert "differs from the training graph" in data_mismatch(cfg, info, fewer_edges)
    average = SimpleNamespace(model=SimpleNamespace(arch="historical_average", seq_len=12))
    assert data_mismatch(average, info, fewer_edges) is None  # no graph in that model


def test_dense_graph_attention_needs_max_neighbors_and_trains_the_same_model(traffic_config):
    with pytest.raises(KilnError, match=r"model.graph_attention 'dense' needs model.max_neighbors"):
        load_recipe_config(traffic_config, ["model.graph_attention=dense"])
    recipe = get_recipe("traffic")
    tasks = {}
    for attention in ("gatv2", "dense"):
        _, cfg = load_recipe_config(traffic_config, ["model.max_neighbors=3", f"model.graph_attention={attention}"])
        splits = recipe.load_data(cfg, lambda m: None)
        torch.manual_seed(0)
        tasks[attention] = recipe.build_task(cfg, splits.info).eval()
    batch = {k: v[:8] for k, v in splits.val.items()}
    assert tasks["gatv2"].state_dict().keys() == tasks["dense"].state_dict().keys()  # checkpoints move between the two
    tasks["dense"].load_state_dict(tasks["gatv2"].state_dict())
    with torch.no_grad():
        torch.testing.assert_close(tasks["dense"].validation_step(batch)["loss"], tasks["gatv2"].validation_step(batch)["loss"],
                                   rtol=1e-4, atol=1e-5)
