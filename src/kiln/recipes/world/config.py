"""Config sections of the world recipe (pydantic only: imported by `kiln --help` and config checks).

The original guide's keys map onto these: model.{latent_dim, encoder.stages, dynamics.num_layers,
dynamics.dropout, decoder.stages, decoder.init_size}, model.{recon,pred,perceptual,latent_reg,
temporal}_weight (the guide's loss: section), data.{sequence_length, frame_skip},
train.{batch_size, accumulate_grad_batches (gradient_accumulation), gradient_clip_val
(max_grad_norm), precision (use_amp), num_workers, log_every_n_steps (log_interval),
val_every_n_steps (eval_interval), checkpoint_every_n_steps (save_interval)},
train.scheduler {warmup (warmup_steps), min_lr} and train.param_groups (the guide's optimizer:
encoder_lr, dynamics_lr, decoder_lr are train.param_groups['model.encoder'].lr etc.; its --encoder-lr flags set them).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from kiln.config import RunConfig, Section

# The CarRacing-v3 zoom-in: the camera animates from far to near over its first second (50 frames).
INTRO_FRAMES = 50
# The SSIM loss's 11x11 window pads frames by 5 pixels, so a side under 6 fails in training; 8 is the power of two above.
MIN_FRAME_SIDE = 8


class CollectSettings(Section):
    """Settings of `kiln data world` (rollouts of a gymnasium environment); kiln train collects a missing
    data.dir from these."""

    env: Literal["CarRacing-v3"] = Field("CarRacing-v3", description="gymnasium environment (the drivers steer CarRacing's car)")
    episodes: int = Field(24, ge=3, description="rollouts in total (train + val + test)")
    # A worker holds its episode's frames until it ends: 10,000 frames of 96x96 are 276 MB.
    steps: int = Field(250, ge=20, le=10_000, description="frames kept per episode, after the dropped intro")
    size: int = Field(64, ge=16, le=96, description="frames are resized to size x size")
    workers: int = Field(2, ge=1, description="parallel worker processes, one environment each")
    val_episodes: int = Field(2, ge=1, description="episodes held out for validation (tracks of the training pool)")
    test_episodes: int = Field(4, ge=1, description="episodes on held-out track seeds for the test split")
    random_fraction: float = Field(0.3, ge=0, le=1, description="share of steps driven by random actions instead of the noisy road follower")
    steer_noise: float = Field(0.3, ge=0, description="std of the road follower's (temporally correlated) steering noise")
    intro_frames: int = Field(INTRO_FRAMES, ge=0, description="first frames of every episode dropped (CarRacing's zoom-in)")
    shard_frames: int = Field(8192, ge=256, description="frames per shard file")
    seed: int = 0

    @model_validator(mode="after")
    def _splits_leave_training_episodes(self):
        if self.val_episodes + self.test_episodes >= self.episodes:
            raise ValueError(f"episodes={self.episodes} must exceed val_episodes + test_episodes "
                             f"({self.val_episodes} + {self.test_episodes}) so training has episodes")
        return self


class ImportSettings(Section):
    """Settings of `kiln data world --frames-dir` (an import of recordings): the collection's split, shard and seed
    settings, and a size range of its own (recordings are not CarRacing's 96x96)."""

    # 256: the import holds a shard of frames (8192 by default) in memory; at 256x256 that is 1.5 GiB.
    size: int = Field(64, ge=MIN_FRAME_SIDE, le=256, description="frames are resized to size x size")
    val_episodes: int = CollectSettings.model_fields["val_episodes"]
    test_episodes: int = CollectSettings.model_fields["test_episodes"]
    shard_frames: int = CollectSettings.model_fields["shard_frames"]
    seed: int = 0


class Augment(Section):
    """Per-sequence augmentation (the same draw for every frame of a window, so it adds no fake motion)."""

    brightness: float = Field(0.2, ge=0, lt=1, description="brightness factor drawn from [1 - b, 1 + b]")
    contrast: float = Field(0.2, ge=0, lt=1, description="contrast factor drawn from [1 - c, 1 + c] (around each frame's mean)")
    crop_scale: tuple[float, float] = Field((0.8, 1.0), description="area share of a random crop, resized back to the frame size")

    @model_validator(mode="after")
    def _crop_range(self):
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1 (got {list(self.crop_scale)})")
        return self


class WorldData(Section):
    dir: str = Field("data/world/quick", description="dataset directory written by `kiln data world`")
    generate: CollectSettings | None = Field(CollectSettings(), description="null for a dataset made elsewhere")
    sequence_length: int = Field(3, ge=2, description="frames per training window: context_frames + prediction horizon")
    frame_skip: int = Field(1, ge=1, description="keep every k-th frame (the action of a step is the mean over the k frames it spans)")
    eval_horizon: int = Field(10, ge=1, description="steps predicted in validation and test (metrics at 1, 5 and this)")
    eval_stride: int = Field(8, ge=1, description="validation/test windows start every N frames")
    augment: Augment | None = Field(Augment(), description="training augmentation; null = off")


class Encoder(Section):
    stages: list[int] = Field([32, 64], min_length=1, description="channels per stage; each stage halves the resolution")


class Dynamics(Section):
    num_layers: int = Field(3, ge=1, description="action-conditioned residual conv blocks per latent step")
    dropout: float = Field(0.0, ge=0, lt=1)
    hidden_dim: int = Field(64, gt=0, description="channels inside the dynamics blocks")


class Decoder(Section):
    stages: list[int] = Field([64, 32], min_length=1, description="channels per stage; each stage doubles the resolution")
    init_size: int = Field(16, gt=0, description="side of the latent map the decoder starts from")
    skip_connections: bool = Field(True, description="each stage also sees the encoder's features of the last observed frame (SVG's content skips)")
    predict_change: bool = Field(True, description="the output is a change added to the last observed frame (untrained = copy-last)")


class WorldModel(Section):
    latent_dim: int = Field(16, gt=0, description="channels of the latent map [latent_dim, init_size, init_size]")
    context_frames: int = Field(2, ge=1, description="observed frames the dynamics sees (latent history)")
    encoder: Encoder = Encoder()
    dynamics: Dynamics = Dynamics()
    decoder: Decoder = Decoder()
    gradient_checkpointing: bool = Field(False, description="recompute encoder/decoder activations in backward (less memory, ~30% slower)")
    recon_weight: float = Field(1.0, ge=0, description="MSE of decoded frames against themselves (autoencoding)")
    pred_weight: float = Field(1.0, ge=0, description="MSE of decoded multi-step latent rollouts against the future frames")
    perceptual_weight: float = Field(0.1, ge=0, description="1 - SSIM of every decoded frame (no pretrained network)")
    latent_reg_weight: float = Field(0.01, ge=0, description="mean squared latent (keeps the latent scale bounded)")
    temporal_weight: float = Field(0.1, ge=0, description="rolled-out latents vs the encoder's latents of the true frames")

    @model_validator(mode="after")
    def _stages_agree(self):
        if len(self.encoder.stages) != len(self.decoder.stages):
            raise ValueError(f"model.encoder.stages ({len(self.encoder.stages)}) and model.decoder.stages "
                             f"({len(self.decoder.stages)}) must have the same length: each halves or doubles the resolution")
        return self


class WorldConfig(RunConfig):
    recipe: Literal["world"] = "world"
    data: WorldData = WorldData()
    model: WorldModel = WorldModel()

    train_defaults: ClassVar[dict[str, Any]] = {"monitor": "val_pred_psnr", "mode": "max"}  # the mean over the eval horizons

    @model_validator(mode="after")
    def _shapes_agree(self):
        if self.data.sequence_length <= self.model.context_frames:
            raise ValueError(f"data.sequence_length={self.data.sequence_length} must exceed model.context_frames="
                             f"{self.model.context_frames}: the rest of a window is the prediction horizon")
        side = self.model.decoder.init_size * 2 ** len(self.model.decoder.stages)
        if side < MIN_FRAME_SIDE:
            raise ValueError(f"model.decoder.init_size * 2^len(stages) = {side}: frames must be at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} "
                             f"(the SSIM loss's 11x11 window)")
        generate = self.data.generate
        if generate is not None and generate.size != side:
            raise ValueError(f"frames of size {generate.size} need model.decoder.init_size * 2^len(stages) = {generate.size} "
                             f"(got {self.model.decoder.init_size} * 2^{len(self.model.decoder.stages)})")
        return self

    @property
    def horizon(self) -> int:
        return self.data.sequence_length - self.model.context_frames
