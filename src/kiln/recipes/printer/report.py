"""Stage 4 report: the original guide's console block and its four figures, plus metrics.json and report.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.engine.report import plot_learning_curves, plt, save_figure, write_summary
from kiln.recipes.printer.task import AXES

REAL_TIME_MS = 1.0  # the guide's requirement: one inference per millisecond sample


def console_report(results: dict, dataset: str) -> str:
    lines = ["=" * 43, "Real-Time Trajectory Error Model Evaluation", "=" * 43,
             f"Dataset: {dataset} ({results['samples']} samples)", "", "Overall Metrics:",
             f"  MAE:  {results['mae']:.4f} mm", f"  RMSE: {results['rmse']:.4f} mm", f"  R\u00b2:   {results['r2']:.4f}", "",
             "Per-Axis Metrics:"]
    for axis in AXES:
        m = results["per_axis"][axis]
        lines += [f"  {axis.upper()}-Axis:", f"    MAE:  {m['mae']:.4f} mm", f"    RMSE: {m['rmse']:.4f} mm", f"    R\u00b2:   {m['r2']:.4f}", ""]
    p = results["percentiles"]
    lines += ["Percentile Errors:", f"  50th (Median): {p['50']:.4f} mm", f"  90th:         {p['90']:.4f} mm",
              f"  95th:         {p['95']:.4f} mm", f"  99th:         {p['99']:.4f} mm", ""]
    lines += [f"Ridge FIR baseline (same windows): R\u00b2 {results['ridge_r2']:.4f}, MAE {results['ridge_mae']:.4f} mm"]
    if "stream" in results:
        lines += [f"Streamed over every test sample:   R\u00b2 {results['stream_r2']:.4f}, MAE {results['stream']['mae']:.4f} mm", ""]
        inference = results["inference"]
        meets = inference["p50_ms"] < REAL_TIME_MS  # the median: a busy machine's preemptions inflate the mean
        lines += ["Inference Performance:", f"  Avg time: {inference['avg_ms']:.3f} ms per sample (streaming; median "
                  f"{inference['p50_ms']:.3f} ms, p99 {inference['p99_ms']:.3f} ms)",
                  f"  Throughput: {inference['throughput_per_s']:,.0f} inf/s",
                  f"  {'✓ Meets' if meets else '✗ Misses'} real-time requirement (< {REAL_TIME_MS:g}ms)", ""]
        targets = results["r2"] >= 0.95 and results["r2"] > results["ridge_r2"] and meets
        lines.append("✓ Model meets all performance targets!" if targets else "✗ Some performance targets missed")
    lines.append("=" * 43)
    return "\n".join(lines)


def plot_trajectory(positions: np.ndarray, errors: np.ndarray, predicted: np.ndarray, rate: float, title: str, out: Path) -> None:
    """One held-out layer: the path coloured by error size, and true vs predicted error per axis over time."""
    fig = plt.figure(figsize=(12, 6.5))
    path = fig.add_subplot(1, 3, 1)
    size = np.linalg.norm(errors, axis=1) * 1000
    points = path.scatter(positions[:, 0], positions[:, 1], c=size, s=1, cmap="viridis")
    fig.colorbar(points, ax=path, label="|error| (um)")
    path.set_aspect("equal")
    path.set_title(title)
    shown = slice(0, min(len(errors), int(4 * rate)))  # the first four seconds
    t = np.arange(len(errors))[shown] / rate
    for k, axis in enumerate(AXES):
        ax = fig.add_subplot(2, 3, (2, 3) if k == 0 else (5, 6))
        ax.plot(t, errors[shown, k] * 1000, color="black", lw=1, label="simulated error")
        ax.plot(t, predicted[shown, k] * 1000, color="tab:orange", lw=1, label="LSTM (streamed)")
        ax.set_ylabel(f"{axis} error (um)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("time in layer (s)")
    save_figure(fig, out)


def plot_distribution(target: np.ndarray, pred: np.ndarray, ridge: np.ndarray, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(-3 * target.std(), 3 * target.std(), 81) * 1000
    ax.hist(target.ravel() * 1000, bins=bins, alpha=0.4, label="error (uncorrected)", color="grey")
    ax.hist((pred - target).ravel() * 1000, bins=bins, alpha=0.6, label="LSTM residual")
    ax.hist((ridge - target).ravel() * 1000, bins=bins, histtype="step", lw=1.5, label="ridge FIR residual")
    ax.set_xlabel("um")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def plot_correlation(target: np.ndarray, pred: np.ndarray, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for k, (ax, axis) in enumerate(zip(axes, AXES)):
        ax.scatter(target[:, k] * 1000, pred[:, k] * 1000, s=2, alpha=0.3)
        lim = np.abs(target[:, k]).max() * 1000
        ax.plot([-lim, lim], [-lim, lim], color="red", lw=1)
        r = np.corrcoef(target[:, k], pred[:, k])[0, 1]
        ax.set_title(f"{axis}: correlation {r:.3f}")
        ax.set_xlabel("true error (um)")
        ax.set_ylabel("predicted (um)")
    save_figure(fig, out)


def plot_per_axis(results: dict, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(AXES))
    for ax, metric in zip(axes, ("mae", "rmse")):
        ax.bar(x - 0.2, [results["per_axis"][a][metric] * 1000 for a in AXES], width=0.4, label=results["model"])
        ax.bar(x + 0.2, [results["ridge"]["per_axis"][a][metric] * 1000 for a in AXES], width=0.4, label="ridge FIR")
        ax.set_xticks(x, [a.upper() for a in AXES])
        ax.set_title(f"{metric.upper()} (um)")
        ax.legend(fontsize=8)
    save_figure(fig, out)


def write_report(run_dir: Path, task, splits, cfg, results: dict, outputs: dict) -> None:
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    target, pred, ridge = outputs["target"], outputs["pred"], outputs["ridge"]  # evaluate's test-window predictions
    figures = {}
    if plot_learning_curves(run_dir, report / "learning_curves.png"):
        figures["Learning curves"] = "learning_curves.png"
    if "streamed" in outputs:  # the LSTM streamed over each held-out layer: draw the longest
        stream = outputs["stream"]
        o = stream["offsets"]
        longest = int(np.argmax(np.diff(o.numpy())))
        layer = slice(int(o[longest]) + stream["warmup"][longest], int(o[longest + 1]))
        predicted = outputs["streamed"][longest]
        plot_trajectory(stream["positions"][layer].numpy(), stream["errors"][layer].numpy(), predicted,
                        splits.info["sample_rate"], f"{stream['models'][longest]} layer {stream['layers'][longest]}",
                        report / "trajectory_comparison.png")
        figures["Trajectory comparison (held-out layer)"] = "trajectory_comparison.png"
    plot_distribution(target, pred, ridge, report / "error_distribution.png")
    plot_correlation(target, pred, report / "error_correlation.png")
    plot_per_axis(results, report / "per_axis_error.png")
    figures.update({"Error distribution": "error_distribution.png", "Error correlation": "error_correlation.png",
                    "Per-axis error": "per_axis_error.png"})
    metrics = {k: results[k] for k in ("mae", "rmse", "r2", "ridge_r2", "ridge_mae", "stream_r2") if k in results}
    metrics.update({f"{axis}_{k}": v for axis in AXES for k, v in results["per_axis"][axis].items()})
    metrics.update({f"p{k}_abs_error": v for k, v in results["percentiles"].items()})
    if "inference" in results:
        metrics.update({"inference_avg_ms": results["inference"]["avg_ms"], "throughput_per_s": results["inference"]["throughput_per_s"]})
    write_summary(report, f"printer: {cfg.name} ({cfg.model.arch}, mm)", metrics, figures)
    print(console_report(results, f"Test, held-out {', '.join(results['test_models'])}"))
