"""Report pieces every recipe shares: learning curves from history, metrics.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, out: Path) -> None:
    """Every report figure: tight layout, 110 dpi PNG, and the figure freed (reports draw many)."""
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_learning_curves(run_dir: Path, out: Path) -> list[str]:
    """One panel per metric that has train_ and/or val_ columns in history.json. Returns metric names."""
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    names = sorted({k.split("_", 1)[1] for k in history if k.startswith(("train_", "val_"))})
    if not names:
        return []
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split in ("train", "val"):
            if f"{split}_{name}" in history:
                ax.plot(history["epoch"], history[f"{split}_{name}"], marker=".", label=split)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out)
    return names


def write_summary(report_dir: Path, title: str, metrics: dict, figures: dict[str, str],
                  tables: dict[str, list[str]] | None = None) -> None:
    """metrics.json plus report.md with the metric table, any further tables (heading -> markdown lines) and the figures."""
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    for heading, table in (tables or {}).items():
        lines += ["", f"## {heading}", "", *table]
    for caption, file in figures.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({file})"]
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")
