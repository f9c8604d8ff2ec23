"""Config sections of the nav recipe (pydantic only: imported by `kiln --help` and config checks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kiln.config import RunConfig, Section


class NavGenerator(Section):
    """Settings of `kiln data nav`; when data.dir is missing, kiln train generates it from these."""

    num_train: int = Field(5000, gt=0, description="base training grids (before augmentation)")
    num_val: int = Field(500, gt=0, description="validation grids (early stopping, best checkpoint)")
    num_test: int = Field(500, gt=0, description="held-out test grids")
    grid_size: int = Field(8, ge=4, le=64)
    obstacle_density: float = Field(0.25, ge=0, lt=1)
    augment: bool = Field(False, description="add the 8 symmetries of every training grid (8x data)")
    seed: int = 0


class NavData(Section):
    dir: str = Field("data/nav/quick", description="dataset directory written by `kiln data nav`")
    generate: NavGenerator | None = Field(NavGenerator(), description="null for a dataset made elsewhere")


class NavModel(Section):
    arch: Literal["mixer", "trm"] = "mixer"
    dim: int = Field(64, gt=0)
    depth: int = Field(2, gt=0, description="mixer blocks (in TRM: blocks of the one tiny network)")
    dropout: float = Field(0.1, ge=0, lt=1)
    token_hidden: int = Field(128, gt=0, description="hidden width of the token-mixing MLP")
    channel_mult: int = Field(4, gt=0, description="channel MLP hidden width = channel_mult * dim")
    recursions: int = Field(1, gt=0, description="mixer: apply the blocks this many times with tied weights; trm: latent steps n")
    cycles: int = Field(2, gt=0, description="trm: recursion cycles T per supervision step (T-1 without gradients)")
    supervision_steps: int = Field(2, gt=0, description="trm: deep-supervision steps per batch")


class NavConfig(RunConfig):
    recipe: Literal["nav"] = "nav"
    data: NavData = NavData()
    model: NavModel = NavModel()
