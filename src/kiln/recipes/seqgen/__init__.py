"""seqgen: an LSTM conditional sequence generator trained with MAE, autocorrelation or combined losses over the
original guide's multi-phase schedules (shared/seeds/002_*.txt). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.recipes import Generator, Recipe, dataset_info, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.seqgen.config import SeqgenConfig, SeqGenerator, SeqSplit, SyntheticStrings


def prepare_data(cfg: SeqgenConfig, log) -> None:
    """Recipe.generate_if_missing with data.split: a made dataset's PCA is fitted on that split's training sequences,
    and an existing dataset whose PCA was fitted on another split is used with a warning."""
    data_dir, split = Path(cfg.data.dir), cfg.data.split

    def make(out: Path, settings: SeqGenerator, log) -> dict:
        return RECIPE.generator.make(out, SyntheticStrings(**settings.model_dump(), **split.model_dump()), log)

    if generate_if_missing(data_dir, cfg.data.generate, make, RECIPE.data_command(data_dir), log):
        return
    info = dataset_info(data_dir)  # {} for a directory of CSV files alone
    if cfg.data.generate is not None and RECIPE.generator.recorded(info) is not None:
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), info, log)
    if "pca_fit_split" in info:
        warn_if_made_differently(data_dir, split.model_dump(), info["pca_fit_split"], log)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    parser.add_argument("--synthetic", action="store_true", required=True,
                        help="simulate the plucked damped string (the embedded default data)")
    add_schema_arguments(parser.add_argument_group("synthetic"), SeqGenerator)
    add_schema_arguments(parser.add_argument_group("split (the PCA is fitted on the training split only)"), SeqSplit)


RECIPE = Recipe(
    name="seqgen", config=SeqgenConfig,
    generator=Generator(SyntheticStrings, lazy("kiln.recipes.seqgen.data", "generate_dataset"), flags="--synthetic",
                        recorded=lambda info: info if info.get("source") == "synthetic-string" else None),
    prepare_data=prepare_data, data_arguments=data_arguments,
    train_flags={"--hidden-size": "model.hidden_size", "--num-layers": "model.num_layers", "--dropout": "model.dropout",
                 "--start-lr": "train.lr", "--max-lag": "model.max_lag", "--alpha": "model.alpha",
                 "--noise-level": "model.noise_level", "--teacher-forcing-start": "model.teacher_forcing_start",
                 "--teacher-forcing-end": "model.teacher_forcing_end", "--clip-grad-norm": "train.gradient_clip_val",
                 "--save-every": "train.checkpoint_every_n_epochs", "--data-dir": "data.dir"},
)
