"""The world model: encoder -> action-conditioned latent dynamics -> decoder (Ha & Schmidhuber 2018's
V-M split, with a spatial latent and a deterministic convolutional M).

Shapes, for frames of side S, encoder stages c_1..c_n and latent_dim D:

    frame     [B, 3, S, S]
    encoder   n stages, each a stride-2 conv + residual block -> 1x1 conv
    latent z  [B, D, s, s]       s = S / 2^n = decoder.init_size
    dynamics  z_{t+1} = z_t + f([z_{t-K+1} .. z_t], coords, a_t)   (num_layers residual blocks, FiLM on the action)
    decoder   1x1 conv -> n stages, each (+ a content skip) a residual block + conv + 2x pixel shuffle
              -> last observed frame + that change (predict_change), or sigmoid of it

A spatial latent (rather than one vector) keeps where things are: CarRacing's camera follows and turns
with the car, so every action moves the whole picture, and a conv dynamics model can express that
motion locally. The two coordinate channels let it tell the car's position (fixed, near the bottom
centre) and the dashboard from the rest, since a turn moves pixels far from the car more.
Multi-step prediction rolls the dynamics forward in latent space on its own predictions and decodes
every step. With decoder.skip_connections the decoder also sees the encoder's feature maps of the
last observed frame (the content skips of Denton & Fergus 2018, SVG): textures, the dashboard and the
score need not squeeze through the latent, which then carries what changes. With
decoder.predict_change (default on) the decoder's output is a change added to the last observed
frame, so an untrained model is exactly copy-last and training can only learn what moves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def groups_for(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the input; optional FiLM (scale, shift) from a condition."""

    def __init__(self, channels: int, dropout: float = 0.0, cond_dim: int = 0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups_for(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups_for(channels), channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # [B, C, 1, 1] each
            h = h * (1 + scale) + shift
        return x + self.conv2(self.dropout(nn.functional.silu(h)))


class Encoder(nn.Module):
    """[B, 3, S, S] -> [B, D, S / 2^n, S / 2^n]. Each stage: a stride-2 4x4 conv, then a residual block (no conv
    runs at full resolution, where a CPU spends most of its time for little gain)."""

    def __init__(self, stages: list[int], latent_dim: int):
        super().__init__()
        widths = [3, *stages]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), ResBlock(widths[i + 1]))
            for i in range(len(stages)))
        self.out = nn.Sequential(nn.GroupNorm(groups_for(stages[-1]), stages[-1]), nn.SiLU(), nn.Conv2d(stages[-1], latent_dim, 1))
        self.checkpointing = False

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The latent, and every stage's feature map (finest first) for the decoder's content skips."""
        features = []
        for stage in self.stages:
            x = checkpoint(stage, x, use_reentrant=False) if self.checkpointing and self.training else stage(x)
            features.append(x)
        return self.out(x), features


class Decoder(nn.Module):
    """[B, D, s, s] -> [B, 3, s * 2^n, s * 2^n] in [0, 1]. Each stage: a residual block, then a conv to 4x the next
    stage's channels and a pixel shuffle (Shi et al. 2016) that doubles the resolution; the last stage's "next
    channels" are the 3 colours, so again no conv runs at full resolution."""

    def __init__(self, stages: list[int], latent_dim: int, skip_channels: list[int] | None, predict_change: bool):
        super().__init__()
        self.predict_change = predict_change
        self.inp = nn.Conv2d(latent_dim, stages[0], 1)
        widths = [*stages, 3]
        # content skips: encoder stage n-1-i has the resolution decoder stage i starts at
        self.skips = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(skip_channels[::-1], stages)) if skip_channels else None
        self.stages = nn.ModuleList(
            nn.Sequential(ResBlock(widths[i]), nn.GroupNorm(groups_for(widths[i]), widths[i]), nn.SiLU(),
                          nn.Conv2d(widths[i], 4 * widths[i + 1], 3, padding=1), nn.PixelShuffle(2))
            for i in range(len(stages)))
        if predict_change:  # starts as "nothing changes": the last observed frame itself
            nn.init.zeros_(self.stages[-1][-2].weight)
            nn.init.zeros_(self.stages[-1][-2].bias)
        self.checkpointing = False

    def forward(self, z: Tensor, content: list[Tensor] | None = None, last: Tensor | None = None) -> Tensor:
        """z [B, D, s, s]; content: the encoder's feature maps of the last observed frame (finest first); last: that
        frame [B, 3, S, S], which the output changes when predict_change is on (then unclamped: the losses pull it
        into [0, 1], and metrics clamp it)."""
        x = self.inp(z)
        for i, stage in enumerate(self.stages):
            if self.skips is not None:
                x = x + self.skips[i](content[-1 - i])
            x = checkpoint(stage, x, use_reentrant=False) if self.checkpointing and self.training else stage(x)
        return last + x if self.predict_change else torch.sigmoid(x)


class Dynamics(nn.Module):
    """Next latent from the last `context` latents and the action applied at the last one (a residual step)."""

    def __init__(self, latent_dim: int, context: int, action_dim: int, hidden: int, num_layers: int, dropout: float):
        super().__init__()
        self.action = nn.Sequential(nn.Linear(action_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Conv2d(context * latent_dim + 2, hidden, 3, padding=1)  # + 2 coordinate channels
        self.blocks = nn.ModuleList(ResBlock(hidden, dropout, cond_dim=hidden) for _ in range(num_layers))
        self.out = nn.Sequential(nn.GroupNorm(groups_for(hidden), hidden), nn.SiLU(), nn.Conv2d(hidden, latent_dim, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # starts as "nothing changes": z_{t+1} = z_t
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, history: Tensor, action: Tensor) -> Tensor:
        """history [B, K, D, s, s] (oldest first), action [B, A] -> z_{t+1} [B, D, s, s]."""
        b, _, _, s, _ = history.shape
        line = torch.linspace(-1, 1, s, device=history.device, dtype=history.dtype)
        coords = torch.stack(torch.meshgrid(line, line, indexing="ij")).expand(b, 2, s, s)
        h = self.inp(torch.cat([history.flatten(1, 2), coords], 1))
        cond = self.action(action)
        for block in self.blocks:
            h = block(h, cond)
        return history[:, -1] + self.out(h)


class WorldModel(nn.Module):
    def __init__(self, cfg, action_dim: int):
        super().__init__()
        self.context = cfg.context_frames
        self.encoder = Encoder(cfg.encoder.stages, cfg.latent_dim)
        self.dynamics = Dynamics(cfg.latent_dim, cfg.context_frames, action_dim, cfg.dynamics.hidden_dim,
                                 cfg.dynamics.num_layers, cfg.dynamics.dropout)
        self.decoder = Decoder(cfg.decoder.stages, cfg.latent_dim, cfg.encoder.stages if cfg.decoder.skip_connections else None,
                               cfg.decoder.predict_change)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute encoder and decoder stage activations during backward instead of keeping them (less memory)."""
        self.encoder.checkpointing = self.decoder.checkpointing = True

    def encode(self, frames: Tensor, context: int) -> tuple[Tensor, list[Tensor]]:
        """[B, L, 3, S, S] -> latents [B, L, D, s, s], and what every decoded frame of the window sees of the last
        observed frame (index context - 1): its encoder features (finest first), then the frame itself."""
        latents, features = self.encoder(frames.flatten(0, 1))
        content = [f.unflatten(0, frames.shape[:2])[:, context - 1] for f in features] + [frames[:, context - 1]]
        return latents.unflatten(0, frames.shape[:2]), content

    def decode(self, latents: Tensor, content: list[Tensor]) -> Tensor:
        """[B, L, D, s, s] -> [B, L, 3, S, S], every frame with the same content of the last observed frame."""
        b, length = latents.shape[:2]
        repeated = [c.repeat_interleave(length, 0) for c in content]
        return self.decoder(latents.flatten(0, 1), repeated[:-1], repeated[-1]).unflatten(0, (b, length))

    def rollout(self, context: Tensor, actions: Tensor) -> Tensor:
        """Open-loop prediction in latent space. context [B, K, D, s, s]: the observed latents; actions [B, H, A]:
        actions[:, j] is applied at the latest frame (observed for j = 0, predicted after). Returns [B, H, D, s, s]."""
        history, predicted = context, []
        for j in range(actions.shape[1]):
            nxt = self.dynamics(history[:, -self.context:], actions[:, j])
            predicted.append(nxt)
            history = torch.cat([history[:, 1:], nxt[:, None]], 1)
        return torch.stack(predicted, 1)
