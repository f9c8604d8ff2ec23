"""What a sweep searches, checked whole against the config schema before anything is written.

A sweep is a base config (a config file plus overrides) and either a grid (`--grid model.dim=64,128,256`, every
point of the product runs once) or a space file searched by TPE or random sampling for --trials trials:

    train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    model.dim: {choice: [64, 128, 256]}
    model.depth: {int: [2, 4]}            # also {log_int: [lo, hi]}; int and uniform take an optional step:
    model.dropout: {uniform: [0.0, 0.3]}

A sweep file holds all of it (`kiln sweep sweeps/nav/seed_grid.yaml`):

    config: configs/nav/quick.yaml
    overrides: [train.max_epochs=3]
    grid: {model.dim: [64, 128, 256], model.depth: [2, 3, 4]}     # or space: {...} and trials: 30
    objective: val_rollout_success                                 # optional, as --objective / --direction
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.errors import KilnError

Scalar = bool | int | float | str
KINDS = ("choice", "uniform", "log_uniform", "int", "log_int")


class SweepFile(BaseModel):
    """The keys of a sweep file."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="the run config every trial starts from, e.g. configs/nav/quick.yaml")
    overrides: list[str] = Field([], description="KEY=VALUE overrides of that config for every trial")
    grid: dict[str, list[Scalar]] | None = Field(None, description="KEY: [values]; every point of the product runs once")
    space: dict[str, dict[str, Any]] | None = Field(None, description="KEY: {choice|uniform|log_uniform|int|log_int: ...}")
    trials: int | None = Field(None, gt=0, description="trials of a space search")
    objective: str | None = None
    direction: Literal["min", "max"] | None = None


@dataclass
class Sweep:
    """A validated sweep: everything a worker needs, saved as the sweep directory's sweep.json."""

    recipe: str
    source: str                         # the config (or sweep) file it was made from, for the log
    config: dict[str, Any]              # the resolved base config: the config file with its overrides
    objective: str
    direction: str                      # min | max
    sampler: str                        # grid | tpe | random
    pruner: str                         # median | hyperband | none
    retries: int                        # re-runs of a trial that failed with an exception
    trials: int                         # grid: the number of points
    grid: dict[str, list[Any]] | None = None
    space: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """What makes two sweeps the same study: the base config, what is searched and the objective (not the trial
        budget, the workers or the retries, which may change on --resume)."""
        import hashlib

        same = {k: getattr(self, k) for k in ("config", "grid", "space", "objective", "direction", "sampler")}
        return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:10]

    def points(self) -> list[dict[str, Any]]:
        """The queue: every grid point in product order, or one empty slot per trial of a search (its parameters are
        sampled when a worker takes it, from every result known by then)."""
        if self.grid is None:
            return [{} for _ in range(self.trials)]
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's parameters: a grid point's fixed values, or the sampler's draw from the space."""
        if self.grid is not None:
            return {key: trial.suggest_categorical(key, values) for key, values in self.grid.items()}
        return {key: suggest(trial, key, distribution(key, entry)) for key, entry in self.space.items()}


def override(key: str, value: Any) -> str:
    """KEY=VALUE text that reads back as `value` (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def read_sweep_file(path: str | Path) -> SweepFile:
    from kiln.config import read_config_file

    try:
        return SweepFile.model_validate(read_config_file(path))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "sweep file"
        raise KilnError(f"sweep file '{path}': {key}: {first['msg']}") from None


def is_sweep_file(path: str | Path) -> bool:
    """A run config names its recipe:; a sweep file names the config it sweeps."""
    from kiln.config import read_config_file

    raw = read_config_file(path)
    return "recipe" not in raw and "config" in raw


def grid_axes(entries: list[str]) -> dict[str, list[Any]]:
    """`--grid KEY=V1,V2 ...` -> {KEY: [V1, V2]}. Values are split on commas outside brackets and read as YAML."""
    from kiln.config import parse_override

    axes: dict[str, list[Any]] = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        if not sep or not key or not text:
            raise KilnError(f"--grid entry '{entry}' must look like KEY=V1,V2,..., e.g. model.dim=64,128,256")
        if key in axes:
            raise KilnError(f"--grid names {key} twice; give all its values in one entry: {key}=V1,V2,...")
        axes[key] = [parse_override(f"{key}={part}")[1] for part in split_top_level(text)]
    return axes


def split_fixed(axes: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], list[str]]:
    """(the axes with two or more values, overrides for the one-value ones): a grid axis with a single value fixes
    that key for every trial, like an override."""
    empty = [key for key, values in axes.items() if not values]
    if empty:
        raise KilnError(f"grid axis {empty[0]} has no values")
    return ({k: v for k, v in axes.items() if len(v) > 1},
            [override(k, v[0]) for k, v in axes.items() if len(v) == 1])


def split_top_level(text: str) -> list[str]:
    """'1,[2,3],4' -> ['1', '[2,3]', '4']."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def distribution(key: str, entry: Any):
    """A space entry ({choice: [...]}, {uniform: [lo, hi]}, ...) as an Optuna distribution; a malformed one is a
    one-line error naming the key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kinds = [k for k in entry if k != "step"] if isinstance(entry, dict) else []
    if len(kinds) != 1 or kinds[0] not in KINDS:
        raise KilnError(f"space entry {key}: {entry!r} must be one of {{{': ..., '.join(KINDS)}: ...}} "
                        f"(e.g. {key}: {{uniform: [0.0, 0.3]}})")
    kind, value, step = kinds[0], entry[kinds[0]], entry.get("step")
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, Scalar) for v in value):
            raise KilnError(f"space entry {key}: choice must be a list of numbers, strings or booleans (got {value!r})")
        if step is not None:
            raise KilnError(f"space entry {key}: choice takes no step")
        return CategoricalDistribution(value)
    numbers = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                  for v in value)
    if not numbers or not value[0] < value[1]:
        raise KilnError(f"space entry {key}: {kind} must be [low, high] with low < high (got {value!r})")
    log = kind.startswith("log_")
    if log and step is not None:
        raise KilnError(f"space entry {key}: {kind} takes no step (a log scale has no even step)")
    if log and value[0] <= 0:
        raise KilnError(f"space entry {key}: {kind} needs low > 0 (got {value[0]})")
    if kind.endswith("int"):
        if not all(float(v).is_integer() for v in value):
            raise KilnError(f"space entry {key}: {kind} bounds must be integers (got {value!r})")
        return IntDistribution(int(value[0]), int(value[1]), log=log, step=int(step or 1))
    return FloatDistribution(float(value[0]), float(value[1]), log=log, step=step)


def suggest(trial, key: str, dist) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def probe_values(dist) -> list[Any]:
    """Values of a distribution to check against the schema: its choices, or its bounds; a float range also an
    inner value with a fraction, so a uniform range over an int key is caught before a trial draws 2.37."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    inner = [] if isinstance(dist.low, int) else [dist.low + (dist.high - dist.low) * 0.37]
    return [dist.low, dist.high, *inner]


def value_at(cfg, key: str) -> Any:
    node = cfg.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def check(path: str, overrides: list[str], what: str):
    """load_recipe_config, with the sweep entry that failed named in front of the schema's error."""
    from kiln.recipes import load_recipe_config

    try:
        return load_recipe_config(path, overrides)[1]
    except KilnError as err:
        raise KilnError(f"{what}: {str(err).removeprefix(f'{path}: ')}") from None


def typed_grid(path: str, overrides: list[str], axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every grid value as the schema types it (64 -> 64, 1e-3 -> 0.001, 0 -> 0.0 for a float key), then every point
    of the product validated whole (a key one model.arch lacks is found here)."""
    typed: dict[str, list[Any]] = {}
    for key, values in axes.items():
        typed[key] = []
        for value in values:
            cfg = check(path, overrides + [override(key, value)], f"--grid {key}={value}")
            got = value_at(cfg, key)
            if not isinstance(got, Scalar):
                raise KilnError(f"--grid {key}={value}: a grid value must be a number, a string or a boolean")
            if got in typed[key]:
                raise KilnError(f"--grid {key} lists the value {value} twice")
            typed[key].append(got)
    for values in itertools.product(*typed.values()):
        point = dict(zip(typed, values))
        check(path, overrides + [override(k, v) for k, v in point.items()],
              "--grid point " + ", ".join(f"{k}={v}" for k, v in point.items()))
    return typed


# Space corners validated together (about 14 ms each, a config read and validated); a larger space checks its
# all-low and all-high corners only.
MAX_CORNERS = 256


def checked_space(path: str, overrides: list[str], space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every entry parsed, its choices or bounds validated, then the space's corners together (every combination of
    each entry's choices or two bounds), so that values that conflict (model.num_layers=1 with model.dropout=0.2)
    are an error before the first trial rather than failed trials."""
    dists = {key: distribution(key, entry) for key, entry in space.items()}
    if not dists:
        raise KilnError("the space is empty; give KEY: {choice|uniform|log_uniform|int|log_int: ...} entries")
    for key, dist in dists.items():
        for value in probe_values(dist):
            check(path, overrides + [override(key, value)], f"space entry {key}={value}")
    ends = {key: probe_values(dist)[:len(dist.choices)] if hasattr(dist, "choices") else probe_values(dist)[:2]
            for key, dist in dists.items()}
    corners = list(itertools.product(*ends.values())) if math.prod(map(len, ends.values())) <= MAX_CORNERS \
        else [tuple(v[0] for v in ends.values()), tuple(v[-1] for v in ends.values())]
    for corner in corners:
        point = dict(zip(ends, corner))
        check(path, overrides + [override(k, v) for k, v in point.items()],
              "the space's corner " + ", ".join(f"{k}={v}" for k, v in point.items()))
    return {key: dict(entry) for key, entry in space.items()}


def objective_of(cfg, objective: str | None, direction: str | None, log=print) -> tuple[str, str]:
    """--objective and --direction: by default the config's train.monitor and train.mode."""
    t = cfg.train
    objective = objective or t.monitor
    if not objective.startswith(("train_", "val_", "test_")):
        raise KilnError(f"--objective '{objective}' must name a train_*, val_* or test_* metric (e.g. {t.monitor})")
    if direction is None:
        if objective != t.monitor:
            raise KilnError(f"--objective {objective}: say whether lower or higher is better with --direction min or max")
        direction = t.mode
    if objective.startswith("test_"):
        log(f"Warning: choosing trials on {objective} selects on the test split, which then no longer measures "
            f"how the chosen model does on unseen data; prefer a val_* objective")
    return objective, direction


def make_sweep(path: str, overrides: list[str], *, grid: dict[str, list[Any]] | None = None,
               space: dict[str, Any] | None = None, trials: int | None = None, objective: str | None = None,
               direction: str | None = None, sampler: str | None = None, pruner: str | None = None,
               retries: int = 0, log=print) -> Sweep:
    """Validate everything a sweep will run (base config, every grid value and point, or every space entry) and
    return it; nothing is written."""
    from kiln.recipes import load_recipe_config

    if (grid is None) == (space is None):
        raise KilnError("kiln sweep needs either --grid KEY=V1,V2 ... or --space SPACE.yaml --trials N")
    recipe, cfg = load_recipe_config(path, overrides)
    if cfg.train.devices > 1:  # every rank would report to the pruner and could decide differently
        raise KilnError(f"kiln sweep trains each trial in one process; set train.devices=1 (got {cfg.train.devices}) and "
                        f"run more --workers instead")
    if grid is not None:
        if not grid:
            raise KilnError("--grid needs at least one KEY=V1,V2,... entry with two or more values")
        if sampler is not None:
            raise KilnError("--sampler is for --space searches; a grid runs every point")
        if trials is not None:
            raise KilnError("--trials is for --space searches; a grid runs each of its points once")
        grid = typed_grid(path, overrides, grid)
        count = math.prod(len(values) for values in grid.values())
    else:
        if trials is None:
            raise KilnError("a --space search needs --trials N (or trials: in the sweep file)")
        space = checked_space(path, overrides, space)
        count = trials
    objective, direction = objective_of(cfg, objective, direction, log)
    return Sweep(recipe=recipe.name, source=str(path), config=cfg.model_dump(mode="json"), objective=objective,
                 direction=direction, sampler="grid" if grid is not None else (sampler or "tpe"),
                 pruner=pruner or ("none" if grid is not None else "median"), retries=retries, trials=count,
                 grid=grid, space=space)


def read_space_file(path: str | Path) -> dict[str, Any]:
    from kiln.config import read_config_file

    raw = read_config_file(path)
    if "config" in raw or "space" in raw:
        raise KilnError(f"'{path}' is a sweep file; run it as kiln sweep {path}")
    return raw
