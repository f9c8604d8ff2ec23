"""world: an action-conditioned video world model on CarRacing-v3 frames (the original guide: shared/seeds/003_*.txt).
Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.errors import KilnError
from kiln.recipes import Generator, Recipe, lazy
from kiln.recipes.world.config import CollectSettings, ImportSettings, WorldConfig


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    parser.add_argument("--frames-dir", type=Path, metavar="DIR",
                        help="convert your own recordings (DIR/<episode>/frames/*.png + actions.csv, see docs/world.md) "
                             "instead of collecting simulator rollouts; uses --size (8 to 256), --val-episodes, --test-episodes, "
                             "--shard-frames, --seed")
    add_schema_arguments(parser.add_argument_group("collection (CarRacing-v3)"), CollectSettings)


def make_data(args: argparse.Namespace) -> None:
    """`kiln data world`: collect CarRacing rollouts, or with --frames-dir import recordings."""
    if args.frames_dir is None:
        RECIPE.make_from_arguments(args)
        return
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog
    from kiln.recipes.world.recordings import import_frames_dir

    unused = [f"--{name.replace('_', '-')}" for name in CollectSettings.model_fields
              if name not in ImportSettings.model_fields and getattr(args, name) is not None]
    if unused:
        raise KilnError(f"{', '.join(unused)} only apply to collecting CarRacing rollouts, not to --frames-dir; drop them")
    settings = schema_from_arguments(args, ImportSettings)
    import_frames_dir(args.frames_dir, args.out, **settings.model_dump(), log=RunLog())


RECIPE = Recipe(
    name="world", config=WorldConfig,
    generator=Generator(CollectSettings, lazy("kiln.recipes.world.data", "collect_dataset"), flags="--env CarRacing-v3",
                        recorded=lambda info: info.get("collect")),
    data_arguments=data_arguments, make_data=make_data,
    # the guide's per-module learning rates (its optimizer: section), the compatibility layer over train.param_groups
    train_flags={f"--{module}-lr": f"train.param_groups.model.{module}.lr" for module in ("encoder", "dynamics", "decoder")},
)
