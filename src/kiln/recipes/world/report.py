"""Report for a world run: the metrics table against copy-last per horizon, a filmstrip of test sequences
(truth, prediction, copy-last), imagined rollouts driven by scripted action sequences, and a GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from kiln.engine.batches import predict
from kiln.engine.files import write_file
from kiln.engine.report import plot_learning_curves, plt, save_figure, write_summary
from kiln.recipes.world.data import CARRACING_ACTIONS, to_float

SEQUENCES_SHOWN = 3
IMAGINED_STEPS = 30
# Action scripts for imagined rollouts: (name, [steer, gas, brake]) held for every step.
SCRIPTS = (("steer left", (-0.8, 0.1, 0.0)), ("straight, gas", (0.0, 0.5, 0.0)), ("steer right", (0.8, 0.1, 0.0)),
           ("brake", (0.0, 0.0, 0.8)))


def as_images(frames: torch.Tensor) -> np.ndarray:
    """[L, 3, S, S] floats -> [L, S, S, 3] uint8."""
    return (frames.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def draw_filmstrip(truth: torch.Tensor, pred: torch.Tensor, context: int, title: str):
    """Per sequence two rows: the true frames (context, then the future) and the model's prediction."""
    b, length = truth.shape[:2]
    fig, axes = plt.subplots(2 * b, length, figsize=(1.1 * length, 2.3 * b), squeeze=False)
    for i in range(b):
        truth_images, pred_images = as_images(truth[i]), as_images(pred[i])
        for t in range(length):
            for row, images, label in ((2 * i, truth_images, "truth"), (2 * i + 1, pred_images, "predicted")):
                ax = axes[row, t]
                ax.set_xticks([]), ax.set_yticks([])
                if row % 2 and t < context:
                    ax.axis("off")
                    continue
                ax.imshow(images[t])
                if t == 0 or (row % 2 and t == context):
                    ax.set_ylabel(label, fontsize=7)
                if row == 0:
                    ax.set_title("observed" if t < context else f"t+{t - context + 1}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


@torch.no_grad()
def imagine(task, context_frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Decoded open-loop rollout from observed frames [K, 3, S, S] under actions [T, A] -> [T, 3, S, S]."""
    latents, content = task.model.encode(context_frames[None].to(task.device), len(context_frames))
    return task.model.decode(task.model.rollout(latents, actions[None].to(task.device)), content)[0].cpu()


def draw_imagined(rows: dict[str, torch.Tensor], start: torch.Tensor, every: int = 3):
    names = list(rows)
    steps = list(range(every - 1, IMAGINED_STEPS, every))
    fig, axes = plt.subplots(len(names), len(steps) + 1, figsize=(1.1 * (len(steps) + 1), 1.25 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        images = as_images(rows[name])
        axes[r, 0].imshow(as_images(start[None])[0])
        axes[r, 0].set_ylabel(name, fontsize=7)
        for c, t in enumerate(steps, start=1):
            axes[r, c].imshow(images[t])
            if r == 0:
                axes[r, c].set_title(f"t+{t + 1}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("last observed", fontsize=7)
    fig.suptitle("Imagined rollouts from one test context under scripted actions (no ground truth)", fontsize=9)
    return fig


def write_gif(rows: dict[str, torch.Tensor], out: Path, scale: int = 2) -> None:
    """The imagined rollouts side by side, one GIF frame per step (Pillow), written atomically."""
    from PIL import Image

    strips = np.concatenate([as_images(frames) for frames in rows.values()], axis=2)  # [T, S, n * S, 3]
    images = [Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST) for frame in strips]
    write_file(out, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=80, loop=0),
               binary=True)


def metrics_table(results: dict) -> list[str]:
    lines = ["| horizon | model PSNR | copy-last PSNR | gain (dB) | model SSIM | copy-last SSIM | PSNR with another window's actions |",
             "|---|---|---|---|---|---|---|"]
    for k in results["pred"]:
        p, c, o = results["pred"][k], results["copy_last"][k], results["pred_other_actions"][k]
        lines.append(f"| {k} | {p['psnr']:.2f} | {c['psnr']:.2f} | {p['psnr'] - c['psnr']:+.2f} | {p['ssim']:.4f} | {c['ssim']:.4f} | {o['psnr']:.2f} |")
    lines.append(f"| reconstruction | {results['recon']['psnr']:.2f} | | | {results['recon']['ssim']:.4f} | | |")
    return lines


def shown_sequences(task, test) -> tuple[torch.Tensor, torch.Tensor]:
    """SEQUENCES_SHOWN test windows spread over the split: their frames [B, L, 3, S, S] and the model's
    eval_horizon-step predictions [B, L - K, 3, S, S], on the CPU."""
    def step(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = to_float(batch["frames"])
        return {"frames": frames, "pred": task.predict(frames, batch["actions"].float(), task.eval_horizon)["pred"]}

    picks = np.linspace(0, len(test) - 1, SEQUENCES_SHOWN).round().astype(int).tolist()
    task.eval()
    shown = predict(Subset(test, picks), step, len(picks), task.device)
    return shown["frames"], shown["pred"]


def write_report(run_dir: Path, task, splits, cfg, results: dict, outputs: dict) -> None:
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    frames, pred = shown_sequences(task, splits.test)
    k = task.context
    save_figure(draw_filmstrip(frames, torch.cat([torch.zeros_like(frames[:, :k]), pred], 1), k,
                               f"Test sequences (held-out tracks): truth vs {task.eval_horizon}-step prediction"),
                report_dir / "filmstrip.png")
    figures = {"Truth vs prediction on test sequences": "filmstrip.png"}
    if splits.info.get("action_names") == CARRACING_ACTIONS:  # the scripts are CarRacing's [steer, gas, brake]
        context = frames[0, :k]
        rows = {name: imagine(task, context, torch.tensor(action).expand(IMAGINED_STEPS, -1)) for name, action in SCRIPTS}
        save_figure(draw_imagined(rows, context[-1]), report_dir / "imagined.png")
        write_gif(rows, report_dir / "imagined.gif")
        figures[f"Imagined rollouts ({', '.join(rows)}), animated in imagined.gif"] = "imagined.png"
    if plot_learning_curves(run_dir, report_dir / "learning_curves.png"):
        figures["Learning curves"] = "learning_curves.png"
    scalars = {key: value for key, value in results.items() if not isinstance(value, dict)}
    write_summary(report_dir, f"world run {cfg.name}", scalars, figures,
                  tables={f"Test metrics vs copy-last ({results['averaging']})": metrics_table(results)})
