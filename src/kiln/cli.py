"""`kiln <verb>`: parse, load the config, call one function. Heavy imports happen inside the verbs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln.errors import KilnError

# The seeds' training flags, mapped onto config keys (`--lr 5e-4` == `train.lr=5e-4`).
SEED_FLAGS = {
    "--dim": "model.dim", "--depth": "model.depth", "--dropout": "model.dropout",
    "--weight-decay": "train.weight_decay", "--lr": "train.lr", "--epochs": "train.max_epochs",
    "--patience": "train.patience", "--batch-size": "train.batch_size", "--device": "train.device",
}


def build_parser() -> argparse.ArgumentParser:
    from kiln.recipes import RECIPES, get_recipe

    parser = argparse.ArgumentParser(prog="kiln", description="Train, evaluate and inspect kiln recipes.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train a config (and evaluate the best model on the test split)",
                             description="Train CONFIG into a run directory; extra KEY=VALUE arguments override the config.")
    train.add_argument("config", nargs="?", help="YAML/JSON config, e.g. configs/nav/quick.yaml")
    train.add_argument("overrides", nargs="*", help="config overrides such as train.lr=5e-4 model.dim=128")
    train.add_argument("--run-dir", type=Path, help="where the run goes (default runs/<recipe>/<config>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --run-dir")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from checkpoints/last.ckpt")
    train.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights (best_model.pt, a .ckpt or a run dir)")
    for flag, key in SEED_FLAGS.items():
        train.add_argument(flag, dest=key, metavar="V", help=f"same as {key}=V")

    evaluate = verbs.add_parser("evaluate", help="re-evaluate a run's best model and rewrite test_results.json and report/")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--map", type=Path, help="nav: a MovingAI .map file to roll the policy out on")
    evaluate.add_argument("--scen", type=Path, help="nav: a MovingAI .scen file with start/goal pairs for --map")
    evaluate.add_argument("--num-pairs", type=int, default=200, help="nav: start/goal pairs sampled when --scen is absent")

    data = verbs.add_parser("data", help="generate or convert a recipe's dataset directory")
    data_recipes = data.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name in sorted(RECIPES):
        recipe = get_recipe(name)
        sub = data_recipes.add_parser(name, help=f"{name} dataset")
        recipe.data_arguments(sub)

    status = verbs.add_parser("status", help="show the state of runs (running, finished, interrupted, failed)")
    status.add_argument("run_dirs", nargs="*", type=Path, help="run directories (default: every run under runs/)")

    logs = verbs.add_parser("logs", help="print a run's train.log")
    logs.add_argument("run_dir", type=Path)
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the run stops")
    return parser


def collect_overrides(args: argparse.Namespace) -> list[str]:
    seeded = [f"{key}={getattr(args, key)}" for key in SEED_FLAGS.values() if getattr(args, key) is not None]
    return seeded + list(args.overrides)


def train(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.engine.rundir import default_run_dir, live_owner, prepare_run_dir

    overrides = collect_overrides(args)
    if args.resume:
        if args.config and "=" in args.config:  # `kiln train --resume RUN train.max_epochs=20`
            overrides.insert(0, args.config)
        run_dir = args.resume
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise KilnError(f"cannot resume '{run_dir}': no checkpoints/last.ckpt there; pass a run directory written by kiln train")
        if (owner := live_owner(run_dir)) is not None:
            raise KilnError(f"cannot resume '{run_dir}': a kiln (pid {owner}) is still training it; stop it first (kill -INT {owner})")
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        if not args.config:
            raise KilnError("kiln train needs a CONFIG file (e.g. configs/nav/quick.yaml) or --resume RUN_DIR")
        cfg = load_config(args.config, overrides)
        run_dir = prepare_run_dir(args.run_dir or default_run_dir(cfg.recipe, cfg.name), args.overwrite)

    from kiln.engine.trainer import fit

    results = fit(cfg, run_dir, resume=bool(args.resume), init_from=args.init_from)
    if results.get("state") == "interrupted":
        return 130
    from kiln.engine.monitor import print_results

    print_results(results, f"test results: {run_dir}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from kiln.engine.trainer import evaluate_run

    options = {"map": args.map, "scen": args.scen, "num_pairs": args.num_pairs} if args.map else None
    if args.scen and not args.map:
        raise KilnError("--scen needs --map (the .map file its start/goal pairs refer to)")
    results = evaluate_run(args.run_dir, options=options)
    from kiln.engine.monitor import print_results

    print_results(results, f"{results.get('name', 'test results')}: {args.run_dir}")
    return 0


def data(args: argparse.Namespace) -> int:
    from kiln.recipes import get_recipe

    get_recipe(args.recipe).make_data(args)
    return 0


def status(args: argparse.Namespace) -> int:
    from kiln.engine.monitor import print_status

    print_status(args.run_dirs or sorted(Path("runs").glob("*/*")))
    return 0


def logs(args: argparse.Namespace) -> int:
    from kiln.engine.monitor import follow_log

    follow_log(args.run_dir, follow=args.follow)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after flags (`kiln train CFG --run-dir D train.lr=1e-3`), which argparse
    # does not gather into one positional list, so collect the leftovers here.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if args.verb != "train" or item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.verb == "train":
        args.overrides = list(args.overrides) + extra
    try:
        return {"train": train, "evaluate": evaluate, "data": data, "status": status, "logs": logs}[args.verb](args)
    except KilnError as err:
        print(f"kiln: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (data generation, imports): nothing to save
        print("kiln: interrupted", file=sys.stderr)
        return 130
