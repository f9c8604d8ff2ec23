"""Typed run configuration: a common `train:` section plus each recipe's `data:` and `model:`.

A config file is YAML (or JSON) with `recipe: <name>`; command-line overrides look like
`train.lr=5e-4 model.dim=128`. Unknown keys and wrong types are one-line `KilnError`s that name
the key and, for a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.errors import KilnError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SchedulerConfig(Section):
    # Every schedule is stepped once per optimizer step.
    name: Literal["none", "warmup_cosine", "linear_decay", "cosine_warm_restarts"] = "none"
    warmup: float = Field(0.0, ge=0, description="warmup_cosine: fraction of all steps if < 1, else a step count")
    min_lr: float = Field(0.0, ge=0, description="final lr (warmup_cosine, linear_decay) or floor (restarts)")
    restart_epochs: float = Field(10, gt=0, description="cosine_warm_restarts: length of the first cycle in epochs")
    restart_mult: int = Field(1, ge=1, description="cosine_warm_restarts: cycle length multiplier")


class TrainConfig(Section):
    batch_size: int = Field(64, gt=0)
    max_epochs: int = Field(10, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    scheduler: SchedulerConfig = SchedulerConfig()
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    accumulate_grad_batches: int = Field(1, gt=0)
    gradient_clip_val: float | None = Field(None, gt=0, description="max global grad norm; null = off")
    log_grad_norm: bool = Field(False, description="log gradient-norm statistics per epoch (mean/max total norm, max |grad|)")
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement; null = off")
    monitor: str = Field("val_loss", description="metric that picks best.ckpt and drives early stopping")
    mode: Literal["min", "max"] = "min"
    checkpoint_every_n_epochs: int = Field(0, ge=0, description="also keep checkpoints/epoch_NNN.ckpt; 0 = off")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="exponential moving average of weights; null = off")
    seed: int = 0
    deterministic: bool = False
    num_workers: int = Field(0, ge=0, description="data-loading worker processes (in-memory recipes ignore it)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; null = number of cores")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loggers: list[Literal["tensorboard", "csv", "wandb"]] = ["tensorboard"]

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class RunConfig(Section):
    """A whole run. Each recipe subclasses it and narrows `data` and `model` to its own sections."""

    recipe: str
    name: str | None = Field(None, description="run name; defaults to the config file's stem")
    data: Section
    model: Section
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _monitor_is_a_split_metric(self) -> RunConfig:
        if not self.train.monitor.startswith(("train_", "val_")):
            raise ValueError(f"train.monitor must name a train_* or val_* metric, got '{self.train.monitor}'")
        return self


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KilnError(f"config file '{path}' not found; pass a YAML file such as configs/nav/quick.yaml")
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise KilnError(f"config file '{path}' is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first_line}")
    if not isinstance(raw, dict):
        raise KilnError(f"config file '{path}' must hold a mapping of sections (recipe:, data:, model:, train:)")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=5e-4` -> (["train", "lr"], 5e-4). Values are read as YAML, so lists and nulls work."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise KilnError(f"override '{text}' must look like section.key=value, e.g. train.lr=5e-4")
    parsed = yaml.safe_load(value) if value.strip() else ""
    if isinstance(parsed, str):  # YAML 1.1 reads 5e-4 as text; numbers are what people mean
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            pass
    return key.split("."), parsed


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid keys at `path` inside `model`, for "did you mean" hints."""
    for part in path:
        field = model.model_fields.get(part)
        # a section may be optional (`NavGenerator | None`): look inside the union for the model
        candidates = (typing.get_args(field.annotation) or (field.annotation,)) if field else ()
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _unknown_key_message(schema: type[BaseModel], loc: list[str]) -> str:
    names = _field_names(schema, loc[:-1])
    close = difflib.get_close_matches(loc[-1], names, n=1)
    if close:
        hint = f"; did you mean '{'.'.join(loc[:-1] + close)}'?"
    else:
        hint = f"; valid keys here: {', '.join(names)}" if names else f"; '{'.'.join(loc[:-1])}' has no sub-keys"
    return f"unknown config key '{'.'.join(loc)}'{hint}"


def apply_overrides(raw: dict[str, Any], overrides: list[str], schema: type[BaseModel]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        for depth in range(1, len(path) + 1):  # name the first part that does not exist
            if path[depth - 1] not in _field_names(schema, path[:depth - 1]):
                raise KilnError(_unknown_key_message(schema, path[:depth]))
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def validate(raw: dict[str, Any], schema: type[RunConfig], source: str) -> RunConfig:
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if first["type"] == "extra_forbidden":
            raise KilnError(f"{source}: {_unknown_key_message(schema, loc)}") from None
        key = ".".join(loc) or "config"
        got = f" (got {first['input']!r})" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
        raise KilnError(f"{source}: {key}: {first['msg']}{got}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a config file against its recipe's schema."""
    from kiln.recipes import get_recipe

    raw = read_config_file(path)
    if "recipe" not in raw:
        raise KilnError(f"config file '{path}' has no 'recipe:' key; add e.g. 'recipe: nav'")
    schema = get_recipe(str(raw["recipe"])).config
    raw = apply_overrides(raw, list(overrides), schema)
    raw.setdefault("name", Path(path).stem)
    return validate(raw, schema, str(path))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
