"""The traffic test evaluation: forecasts over the test windows, their point and distribution metrics (overall, per
horizon, per node, rain or dry), the reference forecasters on the same windows, and the T-GCN protocol's table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from kiln.engine.batches import predict
from kiln.engine.task import Evaluation, Splits
from kiln.recipes.traffic.metrics import (dilate_mixture, error_metrics, interval_coverage, mixture_crps, pit, pit_histogram,
                                          reliability_curve, tgcn_metrics)
from kiln.recipes.traffic.references import HistoricalAverage

if TYPE_CHECKING:
    from kiln.recipes.traffic.config import TrafficConfig
    from kiln.recipes.traffic.task import TrafficTask

RAIN_MM = 0.05  # a forecast step counts as rainy above this precipitation
TAILS = {"below_q01": 0.01, "below_q05": 0.05, "above_q95": 0.95, "above_q99": 0.99}


def predict_split(task: TrafficTask, split: dict[str, Tensor], batch_size: int, calibrated: bool = True,
                  with_loss: bool = False) -> dict[str, Tensor]:
    """Denormalised forecasts for a whole split, on the CPU: {"point": [S, N, P]} plus means/stds/logits [S, N, P, K]
    (the mixture calibrated by the model's spread scale unless `calibrated` is False). `with_loss` adds "loss", the
    validation step's loss over the split (its batches weighted by their size), from the same forward passes."""
    def step(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = task.outputs(batch)
        pred = task.forecast(task.calibrated(out) if calibrated else out)
        if with_loss:  # the batch's mean loss once per window: their mean over the split weights batches by size
            pred["loss"] = task.terms(out, batch, regularise=False)["loss"].expand(len(batch["x"]))
        return pred

    task.eval()
    pred = predict(split, step, batch_size, task.device)
    if with_loss:
        pred["loss"] = pred["loss"].double().mean()
    return pred


def distribution_metrics(pred: dict[str, Tensor], y: Tensor) -> dict:
    """From the PIT of every target: 80% coverage, the reliability curve (observed coverage of the central
    interval at nominal 10..90%), the PIT histogram (uniform when calibrated) and the tails: the share of targets
    below the forecast's 1% and 5% quantiles and above its 95% and 99% quantiles (ideally 0.01, 0.05, 0.05, 0.01).
    Over the finite targets only (a NaN target is no reading)."""
    pred, y = scored(pred, y)
    u = pit(pred["means"].double(), pred["stds"].double(), pred["logits"].double(), y.double())
    curve = reliability_curve(u)
    tails = {name: (u < q if q < 0.5 else u > q).double().mean().item() for name, q in TAILS.items()}
    return {"coverage_80": round(curve["0.8"], 6),
            "crps": round(float(mixture_crps(pred["means"], pred["stds"], pred["logits"], y).mean()), 6),
            "calibration": {k: round(v, 6) for k, v in curve.items()},
            "pit_histogram": [round(c, 6) for c in pit_histogram(u)],
            "tail_coverage": {k: round(v, 6) for k, v in tails.items()}}


def scored(pred: dict[str, Tensor], y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The forecasts and targets of the finite targets only, flattened: ({name: [M, ...]}, [M])."""
    keep = torch.isfinite(y)
    return {k: v[keep] for k, v in pred.items()}, y[keep]


def forecast_metrics(pred: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """MAE, RMSE, MAPE, R2 (+ 80% coverage, CRPS) over all elements of [S, N, P] (finite targets only)."""
    point = error_metrics(pred["point"], y)
    out = {k: round(float(v), 6) for k, v in point.items()}
    if "means" in pred:
        pred, y = scored(pred, y)
        args = (pred["means"], pred["stds"], pred["logits"], y)
        out["coverage_80"] = round(interval_coverage(*args, level=0.8), 6)
        out["crps"] = round(float(mixture_crps(*args).mean()), 6)
    return out


@torch.no_grad()
def evaluate(task: TrafficTask, splits: Splits, cfg: TrafficConfig, options: dict) -> Evaluation:
    """Test metrics (point, distribution, per horizon, per node, by weather, references, the T-GCN protocol);
    the report draws from the same forecasts (outputs["pred"], the mixture as the model ships it)."""
    info, test = splits.info, splits.test
    y = test["y"]
    # windows with every target step inside the data (past it, every node's target is NaN; a missing reading is NaN
    # for its node only, and is left out of each metric, not its window)
    complete = torch.isfinite(y).any(1).all(-1)
    pred = predict_split(task, test, cfg.train.eval_batch_size, calibrated=False, with_loss=True)
    loss = pred.pop("loss")
    raw = None
    if "means" in pred:  # keep the trained mixture for the uncalibrated figures, then stretch it as the model ships it
        raw = {k: pred[k][complete] for k in ("means", "stds", "logits")}
        pred["means"], pred["stds"] = dilate_mixture(pred["means"], pred["stds"], pred["logits"], task.model.spread_scale.cpu())
    full = {k: v[complete] for k, v in pred.items()}
    y_full = y[complete]
    results = {"model": cfg.model.arch, "unit": info["unit"], "samples": int(complete.sum()),
               "missing_targets": int((~torch.isfinite(y_full)).sum()),  # readings the data lacks: left out of the metrics
               **forecast_metrics({"point": full["point"]}, y_full),  # the mixture's figures: distribution_metrics
               "loss": round(loss.item(), 6)}  # over every test window, as val_loss is over every validation window
    if raw is not None:
        results.update(mixture_results(full, raw, y_full, task.model.spread_scale))
    results.update(breakdowns(full, y_full, test, complete, info))
    results.update(reference_results(reference_forecasts(task, splits, cfg), pred["point"], y, complete, info,
                                     list(results["per_horizon"])))
    return Evaluation(results, {"pred": pred})


def mixture_results(full: dict[str, Tensor], raw: dict[str, Tensor], y_full: Tensor, spread_scale: Tensor) -> dict[str, Any]:
    """The shipped (calibrated) mixture's distribution metrics, its spread scale, the same metrics of the mixture as
    trained (`raw`), and each component's mean weight."""
    return {**distribution_metrics(full, y_full), "spread_scale": [round(float(s), 4) for s in spread_scale],
            "uncalibrated": distribution_metrics(raw, y_full),
            "mixture_usage": [round(float(w), 4) for w in torch.softmax(full["logits"], -1).mean((0, 1, 2))]}


def breakdowns(full: dict[str, Tensor], y_full: Tensor, test: dict[str, Tensor], complete: Tensor, info: dict) -> dict[str, Any]:
    """Metrics per forecast step (keyed by minutes ahead), per node, and on rainy against dry forecast steps."""
    steps = y_full.shape[-1]
    out = {"per_horizon": {f"{(h + 1) * info['interval_minutes']}min": forecast_metrics({k: v[:, :, h] for k, v in full.items()},
                                                                                       y_full[:, :, h]) for h in range(steps)}}
    nodes = y_full.shape[1]
    node_errors = error_metrics(full["point"].transpose(0, 1).reshape(nodes, -1), y_full.transpose(0, 1).reshape(nodes, -1), dim=0)
    out["per_node"] = {k: [round(float(v), 4) for v in node_errors[k]] for k in ("mae", "rmse")}
    if "weather" in test:  # the weather branch's use shows where it rains in the forecast window
        rain_mm = test["weather"][complete][:, -steps:, 2] * info["weather_std"][2] + info["weather_mean"][2]
        rain = (rain_mm > RAIN_MM)[:, None, :].expand_as(y_full)
        out["weather_conditions"] = {
            name: {"share": round(float(m.float().mean()), 4), **forecast_metrics({k: v[m] for k, v in full.items()}, y_full[m])}
            for name, m in (("rain", rain), ("dry", ~rain)) if m.any()}
    return out


def reference_forecasts(task: TrafficTask, splits: Splits, cfg: TrafficConfig) -> dict[str, Tensor]:
    """Persistence (last observed speed) and the training split's time-of-day average, on the test windows."""
    test, train = splits.test, splits.train
    mean, std = task.speed_mean, task.speed_std
    P = test["y"].shape[-1]
    last = test["x"][:, :, -1:] * std + mean
    average = HistoricalAverage(test["x"].shape[1], splits.info["steps_per_day"], cfg.model.seq_len)
    average.fit(train["x"], train["slot"])
    return {"persistence": last.expand(-1, -1, P), "historical_average": average(test["slot"]) * std + mean}


def reference_results(references: dict[str, Tensor], point: Tensor, y: Tensor, complete: Tensor, info: dict,
                      step_names: list[str]) -> dict[str, Any]:
    """The references' metrics on the model's windows, overall and per step; under the tgcn protocol the T-GCN
    tables of the model (`point`) and of each reference."""
    y_full = y[complete]
    out = {"references": {name: forecast_metrics({"point": p[complete]}, y_full) for name, p in references.items()},
           "reference_horizons": {
               name: {step: {k: v for k, v in forecast_metrics({"point": p[complete][:, :, h]}, y_full[:, :, h]).items()
                             if k in ("mae", "rmse")} for h, step in enumerate(step_names)}
               for name, p in references.items()}}
    if info["protocol"] == "tgcn":
        out["tgcn_protocol"] = tgcn_table(point, y, info)
        out["tgcn_references"] = {name: tgcn_table(p, y, info) for name, p in references.items()}
        published = info.get("tgcn_references") or {}  # computed once by kiln data traffic --tgcn-references
        if "linear_svr" in published and info["seq_len"] == 12:
            out["tgcn_references"]["linear_svr"] = published["linear_svr"]
    return out


def tgcn_table(point: Tensor, y: Tensor, info: dict) -> dict[str, dict[str, float]]:
    """T-GCN protocol: for each horizon h (15 min = 3 steps at 5 minutes), its windows range(len(test) - seq - h)
    and all steps 1..h pooled, in the data's unit."""
    size = info["bounds"]["test"][1] - info["bounds"]["test"][0]
    table = {}
    for name, h in info["tgcn_horizons"].items():
        if h > y.shape[-1]:
            continue
        n = size - info["seq_len"] - h
        table[name] = {k: round(v, 6) for k, v in tgcn_metrics(point[:n, :, :h].numpy(), y[:n, :, :h].numpy()).items()}
    return table


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Test MAE (all steps, in the data's unit) against persistence's on the same windows."""
    return {"metric": f"test MAE ({results['unit']})", "value": results["mae"], "baseline": "persistence",
            "baseline_value": results["references"]["persistence"]["mae"], "higher_is_better": False}


def data_mismatch(cfg: TrafficConfig, trained_info: dict, info: dict) -> str | None:
    """`kiln evaluate RUN --data DIR`: what keeps the trained model from another dataset, or None. Every architecture
    has one learned embedding per detector and reads its window in steps of the training data's interval; the graph
    models also attend over, or convolve with, the training road graph, which is built into the model."""
    if trained_info.get("num_nodes") != info.get("num_nodes"):
        return (f"the model has one embedding per detector of its {trained_info.get('num_nodes')}-node network and "
                f"this dataset has {info.get('num_nodes')} nodes; train a model on this network")
    if trained_info.get("node_ids") and info.get("node_ids") and trained_info["node_ids"] != info["node_ids"]:
        first = next(i for i, (a, b) in enumerate(zip(trained_info["node_ids"], info["node_ids"])) if a != b)
        return (f"node {first} is detector {info['node_ids'][first]!r} here but {trained_info['node_ids'][first]!r} in the "
                "training data; the per-detector embeddings would score other detectors (order the columns as in training)")
    if trained_info.get("interval_minutes") != info.get("interval_minutes"):
        return (f"the model reads {cfg.model.seq_len} steps of {trained_info.get('interval_minutes')} minutes and this "
                f"dataset has {info.get('interval_minutes')}-minute steps; resample it to the training interval")
    graph = ("edge_index", "edge_weight")
    if cfg.model.arch != "historical_average" and any(trained_info.get(k) != info.get(k) for k in graph if k in trained_info):
        return (f"its road graph ({info.get('num_edges')} edges) differs from the training graph "
                f"({trained_info.get('num_edges')} edges), which model.arch {cfg.model.arch} has built in; train on this graph")
    return None
