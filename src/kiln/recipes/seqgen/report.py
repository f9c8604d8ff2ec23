"""Seqgen report: generated vs true sequences for a few parameter pairs, the model beside its baselines, and the
original guide's args.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kiln.engine.report import plot_learning_curves, plt, save_figure, write_summary
from kiln.engine.files import write_json

SHOWN = 4
METRICS = ("mae", "acf_error", "spectral_distance", "discriminative_score")


def guide_arguments(cfg) -> dict:
    """The guide's args.json: its argument names with this run's values (alpha null under a pure loss)."""
    m, t = cfg.model, cfg.train
    return {"data_dir": cfg.data.dir, "loss": m.loss, "epochs": t.max_epochs, "batch_size": t.batch_size, "start_lr": t.lr,
            "min_lr": t.scheduler.min_lr, "scheduler": t.scheduler.name, "hidden_size": m.hidden_size,
            "num_layers": m.num_layers, "dropout": m.dropout, "teacher_forcing_start": m.teacher_forcing_start,
            "teacher_forcing_end": m.teacher_forcing_end, "noise_level": m.noise_level, "max_lag": m.max_lag,
            "alpha": m.alpha, "weight_decay": t.weight_decay, "clip_grad_norm": t.gradient_clip_val,
            "mixed_precision": t.precision, "save_every": t.checkpoint_every_n_epochs, "seed": t.seed}


def shown_sequences(params: torch.Tensor) -> np.ndarray:
    """SHOWN test sequences spread over parameter space: the extremes of each parameter's range."""
    p = params.numpy()
    picks = [p[:, 0].argmin(), p[:, 0].argmax(), p[:, 1].argmin(), p[:, 1].argmax()]
    return np.array(list(dict.fromkeys(int(i) for i in picks)))[:SHOWN]


def plot_sequences(true: torch.Tensor, curves: dict[str, torch.Tensor], params: np.ndarray, out: Path) -> None:
    """Rows: test sequences; columns: the 5 components; true vs each generator (z-scored units)."""
    rows, cols = true.shape[0], true.shape[-1]
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.0 * rows), sharex=True, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.plot(true[r, :, c], color="black", lw=1.4, label="true")
            for (name, seq), style in zip(curves.items(), ("-", "--", ":")):
                ax.plot(seq[r, :, c], lw=1, ls=style, label=name)
            if r == 0:
                ax.set_title(f"pc{c + 1}")
            if c == 0:
                ax.set_ylabel(f"p = ({params[r, 0]:.3g}, {params[r, 1]:.3g})", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    save_figure(fig, out)


def write_report(run_dir: Path, task, splits, cfg, results: dict, outputs: dict) -> None:
    write_json(run_dir / "args.json", guide_arguments(cfg))
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    figures = {}
    if plot_learning_curves(run_dir, report / "learning_curves.png"):
        figures["Learning curves"] = "learning_curves.png"
    test, info = splits.test, splits.info
    idx = torch.as_tensor(shown_sequences(test["params"]))
    raw_params = test["params"][idx].numpy() * np.array(info["param_std"]) + np.array(info["param_mean"])
    curves = {f"LSTM ({cfg.model.loss}), free-running": outputs["free_running"][idx],  # evaluate's test sequences
              f"k-NN (k={results['knn_k']})": outputs["knn"][idx]}
    plot_sequences(test["y"][idx], curves, raw_params, report / "sequences.png")
    figures["Generated vs true test sequences (z-scored components)"] = "sequences.png"
    headline = {f"{who}_{k}": results[who][k] for who in ("free_running", "knn", "mean_sequence") for k in METRICS}
    write_summary(report, f"seqgen: {cfg.name} ({cfg.model.loss} loss), free-running on {results['samples']} test sequences",
                  {**headline, "knn_k": results["knn_k"]}, figures)
