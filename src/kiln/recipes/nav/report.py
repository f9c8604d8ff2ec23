"""Report for a nav run: test grids with the predicted rollout over an optimal path, learning curves, and the
per-layout, per-size table when the dataset has held-out sets of several sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kiln.engine.report import plot_learning_curves, plt, save_figure, write_summary
from kiln.recipes.nav.evaluation import predict_logits
from kiln.recipes.nav.grid import ACTION_DELTAS
from kiln.recipes.nav.metrics import greedy_rollout

GRIDS_SHOWN = 8


def optimal_path(dist: np.ndarray, start: np.ndarray) -> np.ndarray:
    """One shortest path: step to any neighbour whose distance is one less, until the goal."""
    path, pos, size = [start], start, dist.shape[0]
    while dist[pos[0], pos[1]] > 0:
        for delta in ACTION_DELTAS[:4]:
            r, c = pos + delta
            if 0 <= r < size and 0 <= c < size and dist[r, c] == dist[pos[0], pos[1]] - 1:
                pos = np.array([r, c])
                break
        path.append(pos)
    return np.array(path)


def draw_rollouts(task, split: dict, count: int = GRIDS_SHOWN):
    """A figure of greedy rollouts on the first `count` grids of a split (green: an optimal path, red: the policy)."""
    split = {k: v[:count].cpu() for k, v in split.items()}
    cells = split["cells"]
    size = cells.shape[-1]
    actions = predict_logits(task, cells)[0].argmax(-1).view(-1, size, size)
    reached, _, trail = greedy_rollout(actions, cells == 1, split["starts"], split["goals"], 4 * size * size, record=True)
    trail = torch.stack(trail, 1).numpy()  # [B, steps, 2]
    cols = 4
    fig, axes = plt.subplots(-(-len(cells) // cols), cols, figsize=(3 * cols, 3 * -(-len(cells) // cols)), squeeze=False)
    for b, ax in enumerate(axes.flat):
        ax.axis("off")
        if b >= len(cells):
            continue
        ax.imshow(cells[b].numpy() == 1, cmap="Greys", vmin=0, vmax=1.4)
        best = optimal_path(split["dist"][b].numpy(), split["starts"][b].numpy())
        ax.plot(best[:, 1], best[:, 0], color="tab:green", lw=5, alpha=0.45, label="optimal")
        ax.plot(trail[b, :, 1], trail[b, :, 0], color="tab:red", lw=1.8, ls="--", marker=".", label="policy")
        ax.plot(*split["starts"][b].numpy()[::-1], "o", color="tab:blue", ms=9)
        ax.plot(*split["goals"][b].numpy()[::-1], "*", color="gold", mec="k", ms=14)
        ax.set_title(f"{'reached' if reached[b] else 'FAILED'}: {len(best) - 1} optimal moves", fontsize=9)
    axes.flat[0].legend(loc="lower left", fontsize=7)
    return fig


def write_report(run_dir: Path, task, splits, cfg, results: dict, outputs: dict) -> None:
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    save_figure(draw_rollouts(task, splits.test), report_dir / "rollouts.png")
    figures = {"Greedy rollouts on test grids (green: an optimal path, red: the policy)": "rollouts.png"}
    if plot_learning_curves(run_dir, report_dir / "learning_curves.png"):
        figures["Learning curves"] = "learning_curves.png"
    by_layout_size = results.get("by_layout_size")
    tables = {"Success and optimality per layout and size (held-out sets)": layout_size_table(by_layout_size)} if by_layout_size else {}
    write_summary(report_dir, f"nav run {cfg.name}", {k: v for k, v in results.items() if k != "by_layout_size"}, figures, tables)


def layout_size_table(by_layout_size: dict[str, dict]) -> list[str]:
    """The per-layout, per-size results of `kiln evaluate` as markdown table lines."""
    lines = ["| layout | size | grids | rollout success | optimality | optimal-action accuracy | iterations | s per map |",
             "|---|---|---|---|---|---|---|---|"]
    for row in by_layout_size.values():
        lines.append(f"| {row['layout']} | {row['size']}x{row['size']} | {row['grids']} | {row['rollout_success']:.4f} | "
                     f"{row['rollout_optimality']:.4f} | {row['optimal_action_accuracy']:.4f} | {row['iterations'] or '-'} | "
                     f"{row['seconds_per_map']:.4f} |")
    return lines
