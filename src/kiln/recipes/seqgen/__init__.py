"""seqgen: an LSTM conditional sequence generator trained with MAE, autocorrelation or combined losses over the
seed's multi-phase schedules (seed 002). Torch is imported only inside functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.recipes import Recipe, dataset_info, generate_if_missing, lazy, warn_if_made_differently
from kiln.recipes.seqgen.config import SeqgenConfig, SeqGenerator, SeqSplit


def synthesize(out: Path, settings: SeqGenerator, split: SeqSplit, log) -> dict:
    from kiln.recipes.seqgen.data import generate_dataset

    info = generate_dataset(out, **settings.model_dump(), **split.model_dump())
    log(f"Wrote {out}: {settings.num_sequences} sequences of a plucked damped string ({settings.profile_points}-point "
        f"profile -> 5 PCA components, fitted on the {split.train_size} training sequences: "
        f"{sum(info['pca_explained_variance_ratio']):.4%} of the variance) in {info['generation_seconds']:.1f}s")
    return info


def prepare_data(cfg: SeqgenConfig, log) -> None:
    data_dir = Path(cfg.data.dir)
    make = lambda out, settings, log: synthesize(out, settings, cfg.data.split, log)  # noqa: E731
    if generate_if_missing(data_dir, cfg.data.generate, make, f"kiln data seqgen --synthetic --out {data_dir}", log):
        return
    info = dataset_info(data_dir)  # {} for a directory of the seed's CSV files alone
    if cfg.data.generate is not None and info.get("source") == "synthetic-string":
        warn_if_made_differently(data_dir, cfg.data.generate.model_dump(), info, log)
    if "pca_fit_split" in info:
        warn_if_made_differently(data_dir, cfg.data.split.model_dump(), info["pca_fit_split"], log)


def load_data(cfg: SeqgenConfig, log=print):
    import torch

    from kiln.engine.task import Splits
    from kiln.recipes.seqgen.data import build_splits, read_sequences, split_indices

    data_dir = Path(cfg.data.dir)
    names, params, components = read_sequences(data_dir, cfg.data.on_bad_file, log)
    s = cfg.data.split
    split = split_indices(len(names), s.train_size, s.val_size, s.split_seed)
    arrays, stats = build_splits(params, components, split)
    log(f"Split {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test sequences (seed {s.split_seed})")
    info = {**stats, "dataset": dataset_info(data_dir), "test_files": [names[i] for i in split["test"]]}
    tensors = {name: {k: torch.from_numpy(v) for k, v in split_arrays.items()} for name, split_arrays in arrays.items()}
    return Splits(**tensors, info=info)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    from kiln.config import add_schema_arguments

    parser.add_argument("--synthetic", action="store_true", required=True,
                        help="simulate the plucked damped string (the embedded default data)")
    add_schema_arguments(parser.add_argument_group("synthetic"), SeqGenerator)
    add_schema_arguments(parser.add_argument_group("split (the PCA is fitted on the training split only)"), SeqSplit)


def make_data(args: argparse.Namespace) -> None:
    from kiln.config import schema_from_arguments
    from kiln.engine.rundir import RunLog

    synthesize(args.out, schema_from_arguments(args, SeqGenerator), schema_from_arguments(args, SeqSplit), RunLog())


RECIPE = Recipe(
    name="seqgen", config=SeqgenConfig, prepare_data=prepare_data, load_data=load_data,
    build_task=lazy("kiln.recipes.seqgen.task", "SeqgenTask"),
    evaluate=lazy("kiln.recipes.seqgen.task", "evaluate"),
    report=lazy("kiln.recipes.seqgen.report", "write_report"),
    data_arguments=data_arguments, make_data=make_data,
    train_flags={"--hidden-size": "model.hidden_size", "--num-layers": "model.num_layers", "--dropout": "model.dropout",
                 "--start-lr": "train.lr", "--max-lag": "model.max_lag", "--alpha": "model.alpha",
                 "--noise-level": "model.noise_level", "--teacher-forcing-start": "model.teacher_forcing_start",
                 "--teacher-forcing-end": "model.teacher_forcing_end", "--clip-grad-norm": "train.gradient_clip_val",
                 "--save-every": "train.checkpoint_every_n_epochs", "--data-dir": "data.dir"},
)
