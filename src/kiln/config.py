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
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from kiln.errors import KilnError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, raw: Any) -> Any:
        """pydantic reads true as 1 for int and float fields; a boolean where a number belongs is a mistake, so it is
        handed on as the text 'true'/'false', which the field then rejects under its own name."""
        if not isinstance(raw, dict):
            return raw
        fixed = dict(raw)
        for name, value in raw.items():
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None:
                kinds = set(typing.get_args(field.annotation)) or {field.annotation}
                if kinds & {int, float} and bool not in kinds:
                    fixed[name] = str(value).lower()
        return fixed


class SchedulerConfig(Section):
    # Every schedule is stepped once per optimizer step.
    name: Literal["none", "warmup_cosine", "linear_decay", "cosine_warm_restarts"] = "none"
    warmup: float = Field(0.0, ge=0, description="warmup_cosine: fraction of all steps if < 1, else a step count")
    min_lr: float = Field(0.0, ge=0, description="final lr (warmup_cosine, linear_decay) or floor (restarts)")
    restart_epochs: float = Field(10, gt=0, description="cosine_warm_restarts: length of the first cycle in epochs")
    restart_mult: int = Field(1, ge=1, description="cosine_warm_restarts: cycle length multiplier")


class ParamGroup(Section):
    """Optimizer settings for the parameters under one module-name prefix (e.g. model.encoder)."""

    lr: float | None = Field(None, gt=0, description="learning rate of this group; null = train.lr")
    weight_decay: float | None = Field(None, ge=0, description="weight decay of this group; null = train.weight_decay")


class HealthConfig(Section):
    """Training-health warnings, one line each in train.log; silent in a healthy run. null turns one off."""

    loss_spike_factor: float | None = Field(3.0, gt=1, description="warn when a step's train loss exceeds this times its running median")
    plateau_evals: int | None = Field(10, ge=1, description="warn after this many validations without improvement while patience is off")
    grad_norm_max: float | None = Field(100.0, gt=0, description="warn when the total gradient norm (before clipping) exceeds this")


class CompileConfig(Section):
    """torch.compile of the task's steps (train.compile: true is {backend: inductor, mode: default})."""

    backend: Literal["inductor", "aot_eager", "eager"] = Field("inductor", description="inductor generates kernels; "
                                                                 "aot_eager/eager only trace (for checking a model compiles)")
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = Field(False, description="fail (and fall back to eager) on any graph break instead of splitting")
    dynamic: bool | None = Field(None, description="dynamic shapes: null lets torch decide after a shape changes")


class TrainConfig(Section):
    batch_size: int = Field(64, gt=0, description="samples per device per micro-batch (global batch = batch_size x devices x accumulate_grad_batches)")
    eval_batch_size: int = Field(1024, gt=0, description="samples per batch in validation and test evaluation")
    max_epochs: int = Field(10, gt=0)
    max_steps: int | None = Field(None, gt=0, description="also stop after this many optimizer steps; null = epochs only")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    scheduler: SchedulerConfig = SchedulerConfig()
    param_groups: dict[str, ParamGroup] = Field(default_factory=dict, description="module-name prefix -> {lr, weight_decay}")
    freeze: list[str] = Field(default_factory=list, description="module-name prefixes whose parameters are not trained")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on GPUs with bf16 (16-mixed on older ones) and on CPUs with native bf16 "
        "(AVX512-BF16 or AMX), else 32")
    compile: bool | CompileConfig = Field(False, description="torch.compile the task's steps (true, or {backend, mode, "
                                          "fullgraph, dynamic}); a model that does not compile falls back to eager, said in one line")
    accumulate_grad_batches: int = Field(1, gt=0)
    gradient_clip_val: float | None = Field(None, gt=0, description="max global grad norm; null = off")
    log_grad_norm: bool = Field(False, description="log gradient-norm statistics per epoch (mean/max total norm, max |grad|)")
    log_histograms: bool = Field(False, description="weight and gradient histograms to TensorBoard/W&B at each validation")
    patience: int | None = Field(None, ge=1, description="early stopping: validations without improvement; null = off")
    monitor: str = Field("val_loss", description="metric that picks best.ckpt and drives early stopping")
    log_test_metrics: bool = Field(False, description="also run the validation step on the test split at every validation and "
                                   "log test_* metrics (some seeds record a per-epoch test loss); they never pick or stop anything")
    mode: Literal["min", "max"] = "min"
    val_every_n_steps: int | None = Field(None, gt=0, description="validate every N optimizer steps instead of every epoch")
    checkpoint_every_n_epochs: int = Field(0, ge=0, description="also keep checkpoints/epoch_NNN.ckpt; 0 = off")
    checkpoint_every_n_steps: int | None = Field(None, gt=0, description="also keep checkpoints/step_NNNNNNN.ckpt every N steps")
    log_every_n_steps: int | None = Field(None, gt=0, description="log train loss and lr to the loggers every N steps; null = per validation")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="exponential moving average of weights; null = off")
    health: HealthConfig = HealthConfig()
    seed: int = 0
    deterministic: bool = False
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes; 0 = batches gathered in the main process")
    threads: int | None = Field(None, gt=0, description="torch CPU threads per process; null = the cores this process may use")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = Field(1, gt=0, description="processes (one per GPU, or CPU processes) on this machine")
    strategy: Literal["auto", "ddp"] = Field("auto", description="ddp: DistributedDataParallel over train.devices processes")
    loggers: list[Literal["tensorboard", "csv", "wandb"]] = ["tensorboard"]

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


# Keys a phase may not change: they fix the processes and precision of the whole run.
RUN_LEVEL_KEYS = ("train.devices", "train.strategy", "train.device", "train.precision", "train.threads", "train.loggers")


class RunConfig(Section):
    """A whole run. Each recipe subclasses it and narrows `data` and `model` to its own sections."""

    recipe: str
    name: str | None = Field(None, description="run name; defaults to the config file's stem")
    data: Section
    model: Section
    train: TrainConfig = TrainConfig()
    phases: list[dict[str, Any]] | None = Field(
        None, description="multi-phase training: each entry overrides data/model/train keys for one phase, "
        "plus optional name and init (best | last: which weights of the previous phase it starts from)")

    # A recipe's own defaults for train: keys (e.g. the metric it monitors); a config's train: section wins.
    train_defaults: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _recipe_train_defaults(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and cls.train_defaults and isinstance(raw.get("train", {}), dict):
            raw = {**raw, "train": {**cls.train_defaults, **(raw.get("train") or {})}}
        return raw

    @model_validator(mode="after")
    def _monitor_is_a_split_metric(self) -> RunConfig:
        if not self.train.monitor.startswith(("train_", "val_")):
            raise ValueError(f"train.monitor must name a train_* or val_* metric, got '{self.train.monitor}'")
        return self

    def phase_configs(self) -> list[tuple[str, str, RunConfig]]:
        """(name, init, config) per phase: the base config with the phase's overrides, validated whole."""
        base = self.model_dump(mode="json", exclude={"phases"})
        out = []
        for k, phase in enumerate(self.phases or [], start=1):
            label = f"phases[{k}]" + (f" ({phase['name']})" if isinstance(phase.get("name"), str) else "")
            extra = set(phase) - {"name", "init", "data", "model", "train"}
            if extra:
                raise KilnError(f"{label}: unknown key '{sorted(extra)[0]}'; a phase may set name, init, data, model and train")
            init = phase.get("init", "best")
            if init not in ("best", "last"):
                raise KilnError(f"{label}: init must be best or last (got {init!r})")
            overrides = {key: phase[key] for key in ("data", "model", "train") if key in phase}
            for key in RUN_LEVEL_KEYS:
                section, field = key.split(".")
                if field in (overrides.get(section) or {}):
                    raise KilnError(f"{label}: {key} is set for the whole run and cannot change per phase; set it outside phases:")
            merged = deep_merge(base, overrides)
            merged["name"] = f"{self.name}-{phase.get('name', f'phase_{k}')}"
            out.append((phase.get("name", f"phase_{k}"), init, validate(merged, type(self), label)))
        return out


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """base with overrides applied key by key; nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
        raise KilnError(f"override '{_shown([text])}' must look like section.key=value, e.g. train.lr=5e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split("\n")[0].split())
        raise KilnError(f"override '{_shown([key])}': its value {value!r} is not valid YAML ({reason}); quote it or fix it") from None
    if isinstance(parsed, str):  # YAML 1.1 reads 5e-4 as text; numbers are what people mean
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            pass
    return key.split("."), parsed


def by_arch(*members: type[Section], tag: str = "arch") -> Any:
    """A config section that is one of `members`, chosen by its `tag` key (a pydantic discriminated union): each
    architecture has exactly its own keys, so a key the chosen one ignores is an error. A missing tag means the
    first member's."""
    default = members[0].model_fields[tag].default

    def tag_first(value: Any) -> Any:
        return {tag: default, **value} if isinstance(value, dict) and tag not in value else value

    return typing.Annotated[typing.Union[members], Field(discriminator=tag), BeforeValidator(tag_first)]


def _member(field, raw: Any) -> type[BaseModel] | None:
    """The section class a field holds: itself, the model inside `X | None`, or for a by_arch union the member the
    raw value's tag (or the default's) names."""
    candidates = typing.get_args(field.annotation) or (field.annotation,)
    sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    if not sections:
        return None
    tag = field.discriminator
    if tag and len(sections) > 1:
        wanted = raw.get(tag) if isinstance(raw, dict) and tag in raw else getattr(field.get_default(call_default_factory=True), tag, None)
        return next((c for c in sections if c.model_fields[tag].default == wanted), sections[0])
    return sections[0]


def _keyed_section(field) -> type[BaseModel] | None:
    """V for a `dict[str, V]` field whose values are sections (train.param_groups): its keys are the user's own."""
    if field is None or typing.get_origin(field.annotation) is not dict:
        return None
    value = typing.get_args(field.annotation)[1]
    return value if isinstance(value, type) and issubclass(value, BaseModel) else None


def _field_names(model: type[BaseModel], path: list[str], raw: Any = None) -> list[str]:
    """Valid keys at `path` inside `model` (given the raw config, for by_arch sections), for "did you mean" hints.
    At a free key of a `dict[str, section]` (e.g. train.param_groups.<prefix>) every name is valid: None."""
    keyed = None
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
        if keyed is not None:  # `part` is the user's own key; below it is the value's section
            model, keyed = keyed, None
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        keyed = _keyed_section(field)
        if keyed is None:
            model = _member(field, raw)
            if model is None:
                return []
    return None if keyed is not None else list(model.model_fields)


def _with_dotted_keys(schema: type[BaseModel], path: list[str]) -> list[str]:
    """An override path whose free dict keys may hold dots: train.param_groups.model.encoder.lr addresses the
    group 'model.encoder' (the parts up to a field of the value's section are its key)."""
    model: type[BaseModel] | None = schema
    for i, part in enumerate(path):
        field = model.model_fields.get(part) if model is not None else None
        value = _keyed_section(field)
        if value is not None:
            rest = path[i + 1:]
            if len(rest) >= 2 and rest[-1] in value.model_fields:
                return [*path[:i + 1], ".".join(rest[:-1]), rest[-1]]
            return [*path[:i + 1], ".".join(rest)] if rest else path
        model = _member(field, None) if field else None
    return path


def _schema_path(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """A pydantic error location without the union tags it inserts (`model.recurrent.depth` -> `model.depth`)."""
    out, model, parts = [], schema, list(loc)
    while parts:
        part = parts.pop(0)
        out.append(part)
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            model = None
            continue
        members = {c.model_fields[field.discriminator].default: c for c in typing.get_args(field.annotation)
                   if isinstance(c, type)} if field.discriminator else {}
        model = members.pop(parts.pop(0)) if parts and parts[0] in members else _member(field, None)
    return out


def _shown(parts: list[str]) -> str:
    """A dotted key as the user typed it, with control characters escaped so the message stays one line."""
    key = ".".join(str(part) for part in parts)
    return key if key.isprintable() else repr(key)[1:-1]


def _unknown_key_message(schema: type[BaseModel], loc: list[str], raw: Any = None) -> str:
    names = _field_names(schema, loc[:-1], raw) or []
    close = difflib.get_close_matches(loc[-1], names, n=1)
    tagged = _arch_of(schema, loc[:-1], raw)
    ignored = (f" ({_shown(loc[:-1])}.{tagged[0]} {tagged[1]} has no {loc[-1]})"
               if tagged and loc[-1] in _all_member_fields(schema, loc[:-1]) else "")
    if close and not ignored:
        hint = f"; did you mean '{_shown(loc[:-1] + close)}'?"
    else:
        hint = f"; valid keys here: {', '.join(names)}" if names else f"; '{_shown(loc[:-1])}' has no sub-keys"
    return f"unknown config key '{_shown(loc)}'{ignored}{hint}"


def _arch_of(schema: type[BaseModel], path: list[str], raw: Any) -> tuple[str, str] | None:
    """(tag key, its value quoted) of a by_arch section at `path` (None elsewhere)."""
    model, node = schema, raw
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        if field.discriminator and part == path[-1]:
            chosen = _member(field, node)
            return (field.discriminator, f"'{chosen.model_fields[field.discriminator].default}'") if chosen else None
        model = _member(field, node)
    return None


def _all_member_fields(schema: type[BaseModel], path: list[str]) -> set[str]:
    """Every key any member of a by_arch section at `path` has (a key another architecture takes)."""
    model = schema
    for part in path[:-1]:
        field = model.model_fields.get(part) if model is not None else None
        model = _member(field, None) if field else None
    field = model.model_fields.get(path[-1]) if model is not None and path else None
    if field is None or not field.discriminator:
        return set()
    return {name for c in typing.get_args(field.annotation) if isinstance(c, type) for name in c.model_fields}


def apply_overrides(raw: dict[str, Any], overrides: list[str], schema: type[BaseModel]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        path = _with_dotted_keys(schema, path)
        for depth in range(1, len(path) + 1):  # name the first part that does not exist
            names = _field_names(schema, path[:depth - 1], raw)
            if names is not None and path[depth - 1] not in names:
                raise KilnError(_unknown_key_message(schema, path[:depth], raw))
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
        loc = _schema_path(schema, [str(part) for part in first["loc"]])
        if first["type"] == "extra_forbidden":
            raise KilnError(f"{source}: {_unknown_key_message(schema, loc, raw)}") from None
        key = _shown(loc) or "config"
        if first["type"] == "union_tag_invalid":  # a by_arch section with an unknown arch
            ctx = first["ctx"]
            raise KilnError(f"{source}: {key}.{ctx['discriminator'].strip(chr(39))}: Input should be {ctx['expected_tags']} "
                            f"(got {ctx['tag']!r})") from None
        got = f" (got {first['input']!r})" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
        raise KilnError(f"{source}: {key}: {first['msg']}{got}") from None


def load_config(path: str | Path, overrides: list[str], schema: type[RunConfig]) -> RunConfig:
    """Read, override and validate a config file against a recipe's schema (kiln.recipes.load_recipe_config
    finds the schema from the file's `recipe:` key)."""
    raw = read_config_file(path)
    raw = apply_overrides(raw, list(overrides), schema)
    raw.setdefault("name", Path(path).stem)
    cfg = validate(raw, schema, str(path))
    cfg.phase_configs()  # every phase is checked before anything runs
    return cfg


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def add_schema_arguments(parser, schema: type[BaseModel]) -> None:
    """One `--flag` per field of a flat settings model (e.g. a data generator), typed, with its default and
    description as help: `kiln data <recipe>` flags derive from the schema instead of repeating it."""
    import argparse

    for name, field in schema.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description or name} (default: {default})"
        annotation = field.annotation
        if type(None) in typing.get_args(annotation):  # `int | None` takes an int
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(annotation), default=None, help=help_text)
        else:
            kind = annotation if annotation in (int, float, str) else str
            parser.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(), help=help_text)


def schema_from_arguments(args: Any, schema: type[BaseModel]) -> BaseModel:
    """The settings a `kiln data` command line asks for: given flags over the schema's defaults; a bad value is a
    one-line error naming the flag."""
    given = {name: getattr(args, name) for name in schema.model_fields if getattr(args, name, None) is not None}
    try:
        return schema(**given)
    except ValidationError as err:
        first = err.errors()[0]
        if not first["loc"]:  # a check across several flags
            raise KilnError(f"kiln data: {first['msg']}") from None
        raise KilnError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (got {first['input']!r})") from None
