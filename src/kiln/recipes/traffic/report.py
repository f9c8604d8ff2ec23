"""Traffic report: forecasts with their 80% band, reliability diagram, PIT histogram, error by horizon, per-node error map,
mixture usage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kiln.engine.report import plot_learning_curves, plt, save_figure, write_summary
from kiln.recipes.traffic.metrics import central_interval

SHOWN_NODES = 3


def plot_forecasts(pred: dict, y: torch.Tensor, unit: str, interval: int, out: Path, step: int) -> None:
    """Truth vs the forecast `step` steps ahead over the test period, for the nodes with the most variation."""
    truth = y[:, :, step].numpy()
    valid = np.isfinite(truth).all(1)
    nodes = np.argsort(-np.nanstd(truth[valid], 0))[:SHOWN_NODES]
    hours = np.arange(valid.sum()) * interval / 60
    fig, axes = plt.subplots(len(nodes), 1, figsize=(10, 2.6 * len(nodes)), sharex=True, squeeze=False)
    if "means" in pred:
        lo, hi = central_interval(pred["means"][valid][:, nodes, step], pred["stds"][valid][:, nodes, step],
                                  pred["logits"][valid][:, nodes, step], 0.8)
    for i, (ax, node) in enumerate(zip(axes[:, 0], nodes)):
        ax.plot(hours, truth[valid, node], color="black", lw=1, label="truth")
        ax.plot(hours, pred["point"][valid][:, node, step].numpy(), color="tab:blue", lw=1, label="forecast (mean)")
        if "means" in pred:
            ax.fill_between(hours, lo[:, i].numpy(), hi[:, i].numpy(), color="tab:blue", alpha=0.2, label="80% interval")
        ax.set_ylabel(f"node {node} ({unit})")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[0, 0].set_title(f"test period, forecast {(step + 1) * interval} min ahead")
    axes[-1, 0].set_xlabel("hours into the test period")
    save_figure(fig, out)


def plot_reliability(results: dict, out: Path) -> None:
    """Reliability diagram: observed coverage of the central interval at nominal 10..90%, before and after the
    spread scale fitted on validation."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="perfectly calibrated")
    curves = {"as trained": results.get("uncalibrated", {}).get("calibration"), "calibrated (shipped)": results["calibration"]}
    for (label, curve), style in zip(curves.items(), (dict(color="tab:orange", ls=":"), dict(color="tab:blue"))):
        if curve:
            ax.plot([float(k) for k in curve], list(curve.values()), marker="o", label=label, **style)
    ax.set_xlabel("nominal central-interval level")
    ax.set_ylabel("observed coverage (test)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def plot_pit(results: dict, out: Path) -> None:
    """PIT histogram of the test targets: flat when calibrated; U-shaped when intervals are too narrow."""
    shares = np.asarray(results["pit_histogram"])
    bins = len(shares)
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(edges[:-1], shares, width=1 / bins, align="edge", edgecolor="white", label="calibrated (shipped)")
    if "uncalibrated" in results:
        ax.step(edges, np.append(results["uncalibrated"]["pit_histogram"], results["uncalibrated"]["pit_histogram"][-1]),
                where="post", color="tab:orange", ls=":", label="as trained")
    ax.axhline(1 / bins, color="grey", ls="--", label="uniform")
    ax.set_xlabel("PIT = forecast CDF at the truth")
    ax.set_ylabel("share of test targets")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def plot_horizons(results: dict, unit: str, out: Path) -> None:
    """MAE and RMSE per forecast step for the model and the reference forecasters (same test windows)."""
    steps = list(results["per_horizon"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric in zip(axes, ("mae", "rmse")):
        ax.plot(steps, [results["per_horizon"][s][metric] for s in steps], marker="o", label=results["model"])
        for name, ref in results.get("reference_horizons", {}).items():
            ax.plot(steps, [ref[s][metric] for s in steps], ls="--", label=name)
        ax.set_title(f"{metric.upper()} by horizon ({unit})")
        ax.tick_params(axis="x", rotation=60)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out)


def plot_node_map(nodes: pd.DataFrame, mae: list[float], edges: list[list[int]], unit: str, out: Path) -> None:
    """Per-node MAE at each detector's latitude/longitude, road graph behind."""
    lat, lon = nodes["lat"].to_numpy(float), nodes["lon"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for s, t in zip(*edges):
        ax.plot([lon[s], lon[t]], [lat[s], lat[t]], color="lightgrey", lw=0.6, zorder=1)
    points = ax.scatter(lon, lat, c=mae, cmap="viridis", s=28, zorder=2)
    fig.colorbar(points, ax=ax, label=f"test MAE ({unit})")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title("per-node error")
    save_figure(fig, out)


def plot_mixture(pred: dict, out: Path) -> None:
    """Average weight of each component, and how often each component dominates a forecast."""
    weights = torch.softmax(pred["logits"], -1).reshape(-1, pred["logits"].shape[-1])
    dominant = torch.bincount(weights.argmax(-1), minlength=weights.shape[1]).float() / len(weights)
    labels = [f"component {k + 1}" for k in range(weights.shape[1])]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(x - 0.2, weights.mean(0).numpy(), width=0.4, label="mean weight")
    ax.bar(x + 0.2, dominant.numpy(), width=0.4, label="share of forecasts it dominates")
    ax.axhline(0.8, color="red", ls=":", label="collapse threshold")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def write_report(run_dir: Path, task, splits, cfg, results: dict, outputs: dict) -> None:
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    info = splits.info
    unit, interval = info["unit"], info["interval_minutes"]
    pred = outputs["pred"]  # evaluate's test forecasts
    figures = {}
    if plot_learning_curves(run_dir, report / "learning_curves.png"):
        figures["Learning curves"] = "learning_curves.png"
    horizons = list(info["tgcn_horizons"].values())  # plot the 15-minute forecast where the interval allows
    step = min(horizons[0] - 1 if horizons else 0, splits.test["y"].shape[-1] - 1)
    plot_forecasts(pred, splits.test["y"], unit, interval, report / "forecasts.png", step)
    figures["Forecasts vs truth (80% band)"] = "forecasts.png"
    plot_horizons(results, unit, report / "error_by_horizon.png")
    figures["Error by horizon"] = "error_by_horizon.png"
    if "calibration" in results:
        plot_reliability(results, report / "reliability.png")
        plot_pit(results, report / "pit_histogram.png")
        plot_mixture(pred, report / "mixture_weights.png")
        figures["Reliability diagram"] = "reliability.png"
        figures["PIT histogram"] = "pit_histogram.png"
        figures["Mixture-weight usage"] = "mixture_weights.png"
    nodes_path = Path(cfg.data.dir) / "nodes.csv"
    nodes = pd.read_csv(nodes_path) if nodes_path.is_file() else pd.DataFrame()
    if {"node_id", "lat", "lon"} <= set(nodes.columns):
        nodes = nodes.drop_duplicates("node_id").set_index("node_id").reindex(info["node_ids"])  # in the model's node order
        if nodes[["lat", "lon"]].notna().all().all():
            plot_node_map(nodes, results["per_node"]["mae"], info["edge_index"], unit, report / "node_error_map.png")
            figures["Per-node MAE"] = "node_error_map.png"
    headline = {k: results[k] for k in ("mae", "rmse", "mape", "r2", "coverage_80", "crps", "loss") if k in results}
    if "uncalibrated" in results:
        headline.update({f"uncalibrated_{k}": results["uncalibrated"][k] for k in ("coverage_80", "crps")})
    for name, ref in results.get("references", {}).items():
        headline.update({f"{name}_mae": ref["mae"], f"{name}_rmse": ref["rmse"]})
    for horizon, row in results.get("tgcn_protocol", {}).items():
        headline.update({f"tgcn_{horizon}_{k}": v for k, v in row.items()})
    write_summary(report, f"traffic: {cfg.name} ({cfg.model.arch}, {unit})", headline, figures)
