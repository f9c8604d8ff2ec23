"""World task: the five weighted losses, and PSNR/SSIM beside the copy-last-frame baseline (evaluation.py: the test split).

A batch is a window of L frames and their actions. The first K = context_frames are observed; the
model encodes them, rolls the dynamics forward L - K steps in latent space (each step on its own
previous prediction) and decodes every step. Losses (weights from model.*_weight):

    recon       MSE of decode(encode(x_t)) against x_t, every frame of the window (with predict_change the
                decoder changes the last observed frame, so this is "get from there to x_t given x_t's latent")
    pred        MSE of the decoded rollout against the true future frames
    perceptual  1 - SSIM of every decoded frame (recon and rollout) against its target. No pretrained
                network exists offline, so this is the SSIM-based variant (torchmetrics' SSIM, computed as
                separable matrix products in float32: under bf16 autocast its variances cancel to noise)
    latent_reg  mean squared latent value (keeps the latent scale from drifting, which the rollout would amplify)
    temporal    MSE of the rolled-out latents against the encoder's latents of the true future frames
                (targets detached): the predicted trajectory stays on the encoded one, so long rollouts
                stay where the decoder was trained

Metrics: PSNR (torchmetrics) and SSIM (ssim_fp32, equal to torchmetrics'), data_range 1.0, per frame, averaged
over frames (the mean of per-frame PSNRs, not a PSNR of the pooled MSE), for reconstruction and for k-step
prediction, each beside copy-last (predict frame t + k as frame t) on the same frames.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from kiln.engine.task import Task
from kiln.recipes.world.data import augment, to_float
from kiln.recipes.world.model import WorldModel

REPORTED_HORIZONS = (1, 5, 10)
# Identical frames (a car standing still) have infinite PSNR, which would make every mean infinite; 60 dB is far
# above any real error of 8-bit frames (a one-level error everywhere is 48 dB).
MAX_PSNR = 60.0


def frame_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame PSNR in dB of [N, 3, H, W] images in [0, 1] (predictions clamped into it) -> [N], at most MAX_PSNR."""
    psnr = peak_signal_noise_ratio(pred.float().clamp(0, 1), target.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return psnr.clamp(max=MAX_PSNR)


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # torchmetrics' (and Wang et al.'s) Gaussian window


def blur_matrix(size: int, device: torch.device) -> Tensor:
    """[size, size] matrix of reflect padding followed by the 1-D Gaussian window, along one image axis: the 2-D
    window is the outer product of two 1-D ones, so blurring an image X [H, W] is blur(H) @ X @ blur(W).T."""
    taps = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - (SSIM_WINDOW - 1) / 2
    window = torch.exp(-(taps / SSIM_SIGMA) ** 2 / 2)
    pad = SSIM_WINDOW // 2
    impulses = F.pad(torch.eye(size, device=device)[:, None, :], (pad, pad), mode="reflect")
    return F.conv1d(impulses, (window / window.sum()).view(1, 1, -1))[:, 0, :].T  # column j: the response to pixel j


def ssim_fp32(pred: Tensor, target: Tensor, reduction: str = "elementwise_mean") -> Tensor:
    """SSIM (Wang et al., 2004) of [N, C, H, W] images in [0, 1] as torchmetrics' structural_similarity_index_measure
    computes it (11x11 Gaussian window of sigma 1.5, reflect padding, K1 0.01, K2 0.03, the mean over every pixel),
    with the window applied as two matrix products (blur_matrix): on the CPU torch's 3-channel 11x11 convolution
    took 60% of a world training step, the products a sixth of its time. Tests compare both, values and gradients.
    Always float32, even inside a bf16 autocast region: the local variances E[x^2] - E[x]^2 cancel catastrophically
    in bf16 (the SSIM of a CarRacing frame with itself came out 0.02 instead of 1)."""
    with torch.autocast(pred.device.type, enabled=False):
        x, y = pred.float(), target.float()
        n, _, height, width = x.shape
        stats = torch.cat([x, y, x * x, y * y, x * y])                     # [5N, C, H, W]
        stats = blur_matrix(height, x.device) @ stats @ blur_matrix(width, x.device).T
        mu_x, mu_y, xx, yy, xy = stats.split(n)
        var_x, var_y = (xx - mu_x ** 2).clamp(min=0), (yy - mu_y ** 2).clamp(min=0)
        cov = xy - mu_x * mu_y
        c1, c2 = 0.01 ** 2, 0.03 ** 2                                       # (K * data range 1) ** 2
        ssim = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        per_image = ssim.flatten(1).mean(1)
    return per_image if reduction == "none" else per_image.mean()


def frame_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame SSIM (11x11 Gaussian window, sigma 1.5) of [N, 3, H, W] images in [0, 1] -> [N]."""
    return ssim_fp32(pred.clamp(0, 1), target, reduction="none")


def horizons_for(eval_horizon: int) -> list[int]:
    return sorted({k for k in REPORTED_HORIZONS if k <= eval_horizon} | {eval_horizon})


class WorldTask(Task):
    console_metrics = ("loss", "recon_psnr", "pred_psnr", "copy_psnr")

    def __init__(self, cfg, info: dict[str, Any]):
        super().__init__()
        self.model = WorldModel(cfg.model, info["action_dim"])
        if cfg.model.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.context, self.horizon = cfg.model.context_frames, cfg.horizon
        self.eval_horizon = cfg.data.eval_horizon
        self.weights = {name: getattr(cfg.model, f"{name}_weight") for name in ("recon", "pred", "perceptual", "latent_reg", "temporal")}
        self.augment = cfg.data.augment

    # ------------------------------------------------------------------ forward

    def predict(self, frames: Tensor, actions: Tensor, steps: int) -> dict[str, Tensor]:
        """frames [B, L, 3, S, S] (the first K observed), actions [B, L, A] -> latents of every frame, their
        reconstructions, and `steps` rolled-out latents and decoded predictions of frames K .. K + steps - 1."""
        k = self.context
        latents, content = self.model.encode(frames, k)
        rolled = self.model.rollout(latents[:, :k], actions[:, k - 1:k - 1 + steps])
        return {"latents": latents, "recon": self.model.decode(latents, content), "rolled": rolled,
                "pred": self.model.decode(rolled, content)}

    def losses(self, frames: Tensor, out: dict[str, Tensor], steps: int) -> dict[str, Tensor]:
        k = self.context
        target = frames[:, k:k + steps]
        pred = out["pred"][:, :steps]
        decoded, wanted = torch.cat([out["recon"], pred], 1).flatten(0, 1), torch.cat([frames, target], 1).flatten(0, 1)
        terms = {
            "recon": (out["recon"] - frames).square().mean(),
            "pred": (pred - target).square().mean(),
            "perceptual": 1 - ssim_fp32(decoded, wanted),
            "latent_reg": out["latents"].float().square().mean(),
            "temporal": (out["rolled"][:, :steps] - out["latents"][:, k:k + steps].detach()).square().mean(),
        }
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": loss, **{f"{name}_loss": value.detach() for name, value in terms.items()}}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        frames, actions = to_float(batch["frames"]), batch["actions"].float()
        if self.augment is not None:
            frames = augment(frames, self.augment.brightness, self.augment.contrast, self.augment.crop_scale)
        return self.losses(frames, self.predict(frames, actions, self.horizon), self.horizon)

    def validation_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The training losses on the first `horizon` steps, plus per-frame metrics over the whole eval horizon."""
        frames, actions = to_float(batch["frames"]), batch["actions"].float()
        out = self.predict(frames, actions, self.eval_horizon)
        metrics = self.losses(frames, out, self.horizon)
        scores = self.scores(frames, out)
        metrics["recon_psnr"] = scores["recon"]["psnr"].mean()
        metrics["pred_psnr"] = frame_psnr(out["pred"].flatten(0, 1), frames[:, self.context:].flatten(0, 1)).mean()
        metrics["copy_psnr"] = frame_psnr(frames[:, self.context - 1:self.context].expand_as(out["pred"]).flatten(0, 1),
                                          frames[:, self.context:].flatten(0, 1)).mean()
        for k in horizons_for(self.eval_horizon):
            metrics[f"pred_psnr_{k}"] = scores["pred"][k]["psnr"].mean()
            metrics[f"copy_psnr_{k}"] = scores["copy_last"][k]["psnr"].mean()
        return metrics

    def scores(self, frames: Tensor, out: dict[str, Tensor]) -> dict[str, Any]:
        """Per-frame PSNR and SSIM: [B, L - K] for reconstruction (decode(encode(x)) of every future frame of the
        window: what the latent can hold, the ceiling of prediction), and [B] for k-step prediction and copy-last at
        each reported horizon k, all on the same frames."""
        k0 = self.context
        last = frames[:, k0 - 1]
        recon = self.pair(out["recon"][:, k0:].flatten(0, 1), frames[:, k0:].flatten(0, 1))
        result: dict[str, Any] = {"recon": {name: value.view(len(frames), -1) for name, value in recon.items()},
                                  "pred": {}, "copy_last": {}}
        for k in horizons_for(self.eval_horizon):
            target = frames[:, self.context - 1 + k]
            result["pred"][k] = self.pair(out["pred"][:, k - 1], target)
            result["copy_last"][k] = self.pair(last, target)
        return result

    @staticmethod
    def pair(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"psnr": frame_psnr(pred, target), "ssim": frame_ssim(pred, target)}

    # ------------------------------------------------------------------ media

    def log_media(self, media, batch: dict[str, Tensor], step: int) -> None:
        frames, actions = to_float(batch["frames"][:4]), batch["actions"][:4].float()
        out = self.predict(frames, actions, self.eval_horizon)
        media.image("val/truth_recon_prediction", filmstrip(frames, out["recon"], out["pred"], self.context), step)


def filmstrip(truth: Tensor, recon: Tensor, pred: Tensor, context: int) -> Tensor:
    """One image [3, rows * S, L * S]: per sequence a row of true frames, of reconstructions, and of predictions
    (black under the observed frames)."""
    b, length = truth.shape[:2]
    blank = torch.zeros_like(truth[:, :context])
    rows = [torch.cat(list(row), -1) for i in range(b) for row in (truth[i], recon[i], torch.cat([blank[i], pred[i]], 0))]
    return torch.cat(rows, -2).clamp(0, 1)


def build_task(cfg, info: dict[str, Any]) -> WorldTask:
    return WorldTask(cfg, info)
