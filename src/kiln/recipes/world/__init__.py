"""world: an action-conditioned video world model on CarRacing-v3 frames (seed 003). Torch is imported only
inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Recipe, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.world.config import CollectSettings, WorldConfig


def collect(out: Path, settings: CollectSettings, log) -> dict:
    from kiln.recipes.world.data import collect_dataset

    return collect_dataset(out, settings, log)


def prepare_data(cfg: WorldConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    command = f"kiln data world --env CarRacing-v3 --out {data_dir} (or --frames-dir DIR for your own recordings)"
    if generate_if_missing(data_dir, cfg.data.generate, collect, command, log):
        return
    from kiln.recipes.world.data import read_info

    info = read_info(data_dir)
    if cfg.data.generate is not None and "collect" in info:
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), info["collect"], log)


def load_data(cfg: WorldConfig, log=print):
    from kiln.engine.task import Splits
    from kiln.recipes.world.data import WindowDataset, read_info

    data_dir = Path(cfg.data.dir)
    info = read_info(data_dir)
    side = cfg.model.decoder.init_size * 2 ** len(cfg.model.decoder.stages)
    if info["size"] != side:
        raise KilnError(f"'{data_dir}' holds {info['size']}x{info['size']} frames but the model makes {side}x{side} "
                        f"(model.decoder.init_size * 2^len(stages)); change init_size or rewrite the data with --size {side}")
    eval_length = cfg.model.context_frames + cfg.data.eval_horizon
    splits = Splits(
        train=WindowDataset(data_dir, "train", info, cfg.data.sequence_length, 1, cfg.data.frame_skip),
        val=WindowDataset(data_dir, "val", info, eval_length, cfg.data.eval_stride, cfg.data.frame_skip),
        test=WindowDataset(data_dir, "test", info, eval_length, cfg.data.eval_stride, cfg.data.frame_skip),
        info=info)
    log(f"Windows: {len(splits.train):,} train ({cfg.data.sequence_length} frames), {len(splits.val):,} val and "
        f"{len(splits.test):,} test ({eval_length} frames) from {data_dir}")
    return splits


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    parser.add_argument("--frames-dir", type=Path, metavar="DIR",
                        help="convert your own recordings (DIR/<episode>/frames/*.png + actions.csv, see docs/world.md) "
                             "instead of collecting simulator rollouts; uses --size, --val-episodes, --test-episodes, --seed")
    add_schema_arguments(parser.add_argument_group("collection (CarRacing-v3)"), CollectSettings)


def make_data(args: argparse.Namespace) -> None:
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog

    log = RunLog()
    if args.frames_dir is not None:
        from kiln.recipes.world.data import import_frames_dir

        defaults = CollectSettings()
        pick = lambda name: getattr(args, name) if getattr(args, name) is not None else getattr(defaults, name)  # noqa: E731
        import_frames_dir(args.frames_dir, args.out, pick("size"), pick("val_episodes"), pick("test_episodes"),
                          pick("shard_frames"), pick("seed"), log)
        return
    collect(args.out, schema_from_arguments(args, CollectSettings), log)


RECIPE = Recipe(
    name="world", config=WorldConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.world.task", "build_task"),
    evaluate=lazy("kiln.recipes.world.task", "evaluate"),
    report=lazy("kiln.recipes.world.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
    # the seed's per-module learning rates (its optimizer: section); each becomes a train.param_groups entry
    train_flags={"--encoder-lr": "model.encoder_lr", "--dynamics-lr": "model.dynamics_lr", "--decoder-lr": "model.decoder_lr"},
)
