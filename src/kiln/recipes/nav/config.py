"""Config sections of the nav recipe (pydantic only: imported by `kiln --help` and config checks)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kiln.config import RunConfig, Section, by_arch


class NavGenerator(Section):
    """Settings of `kiln data nav`; when data.dir is missing, kiln train generates it from these."""

    num_train: int = Field(5000, gt=0, description="base training grids (before augmentation)")
    num_val: int = Field(500, gt=0, description="validation grids (early stopping, best checkpoint)")
    num_test: int = Field(500, gt=0, description="held-out test grids")
    grid_size: int = Field(8, ge=4, le=64, description="side of the grids (the largest side with min_grid_size)")
    min_grid_size: int | None = Field(None, ge=4, description="draw each grid's side from min_grid_size..grid_size; "
                                      "smaller grids are padded with walls")
    layout: str = Field("random", description="random, maze, rooms, maps:DIR (windows of a folder of MovingAI .map "
                        "files) or a weighted mix such as random=2,maze=1,rooms=1")
    obstacle_density: float = Field(0.25, ge=0, lt=1, description="wall density of the random layout")
    augment: bool = Field(False, description="add the 8 symmetries of every training grid (8x data)")
    eval_sizes: list[int] = Field([], description="sides of extra held-out sets, one per layout and side (e.g. 8,16,32,64), "
                                  "for the per-layout, per-size table of kiln evaluate")
    eval_grids: int = Field(200, gt=0, description="grids in each of those sets")
    seed: int = 0

    @field_validator("eval_sizes", mode="before")
    @classmethod
    def _comma_list(cls, value):
        if isinstance(value, str):  # the command line gives "8,16,32,64"
            return [part for part in value.replace(" ", "").split(",") if part]
        return value

    @field_validator("eval_sizes")
    @classmethod
    def _sides(cls, value):
        if any(side < 4 for side in value):
            raise ValueError("every eval size must be at least 4")
        return value

    @field_validator("layout")
    @classmethod
    def _layout(cls, value):
        from kiln.recipes.nav.layouts import parse_layouts

        parse_layouts(value)  # names the bad layout or weight; the maps folder is read when the data is made
        return value

    @model_validator(mode="after")
    def _side_range(self):
        if self.min_grid_size is not None and self.min_grid_size > self.grid_size:
            raise ValueError(f"min_grid_size {self.min_grid_size} is larger than grid_size {self.grid_size}")
        return self


class NavData(Section):
    dir: str = Field("data/nav/quick", description="dataset directory written by `kiln data nav`")
    generate: NavGenerator | None = Field(NavGenerator(), description="null for a dataset made elsewhere")


class MixerModel(Section):
    """An MLP-Mixer over the cells; its position embedding ties it to the training grid size."""

    arch: Literal["mixer"] = "mixer"
    dim: int = Field(64, gt=0, description="token width")
    depth: int = Field(2, gt=0, description="mixer blocks")
    dropout: float = Field(0.1, ge=0, lt=1)
    token_hidden: int = Field(128, gt=0, description="hidden width of the token-mixing MLP")
    channel_mult: int = Field(4, gt=0, description="channel MLP hidden width = channel_mult * dim")
    recursions: int = Field(1, gt=0, description="apply the blocks this many times with tied weights")


class TrmModel(MixerModel):
    """TRM: one tiny mixer network refines a latent and an answer, with deep supervision; tied to the grid size."""

    arch: Literal["trm"] = "trm"
    depth: int = Field(2, gt=0, description="blocks of the one tiny network")
    recursions: int = Field(1, gt=0, description="latent steps n per cycle")
    cycles: int = Field(2, gt=0, description="recursion cycles T per supervision step (T-1 without gradients)")
    supervision_steps: int = Field(2, gt=0, description="deep-supervision steps per batch")


class RecurrentModel(Section):
    """A weight-tied recurrent convolutional policy with no size in its weights: runs on maps of any size."""

    arch: Literal["recurrent"] = "recurrent"
    dim: int = Field(64, gt=0, description="state channels per cell")
    channel_mult: int = Field(4, gt=0, description="hidden width of the gated update = channel_mult * dim")
    iterations: int | None = Field(None, gt=0, description="iterations at inference; null = per map, its goal's BFS "
                                   "eccentricity + 2 (the length of the wave)")


class NavConfig(RunConfig):
    recipe: Literal["nav"] = "nav"
    data: NavData = NavData()
    model: by_arch(MixerModel, TrmModel, RecurrentModel) = MixerModel()

    # every nav run keeps the checkpoint whose greedy rollouts reach the goal most often
    train_defaults: ClassVar[dict[str, Any]] = {"monitor": "val_rollout_success", "mode": "max"}
