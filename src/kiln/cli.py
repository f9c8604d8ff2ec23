"""`kiln <verb>`: parse, load the config, call one function. Heavy imports happen inside the verbs.

The CLI resolves the recipe (from the config's `recipe:` key or the run directory's config.yaml) and
hands it to the engine. Flags that belong to one recipe (nav's `--dim`, `--map`) come from its
registry entry; the flags every seed uses for training (`--lr`, `--epochs`, ...) are common.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln.errors import KilnError

# The seeds' training flags every recipe shares, mapped onto config keys (`--lr 5e-4` == `train.lr=5e-4`).
TRAIN_FLAGS = {
    "--lr": "train.lr", "--epochs": "train.max_epochs", "--patience": "train.patience", "--batch-size": "train.batch_size",
    "--weight-decay": "train.weight_decay", "--device": "train.device",
}


def flag_dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-").replace("-", "_")


def add_config_arguments(parser: argparse.ArgumentParser, recipes: dict) -> None:
    """CONFIG, KEY=VALUE overrides, the common seed flags and every recipe's own training flags."""
    parser.add_argument("config", nargs="?", help="YAML/JSON config, e.g. configs/nav/quick.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides such as train.lr=5e-4 model.dim=128")
    parser.add_argument("--config", dest="config_flag", metavar="CONFIG", help="the same as the positional CONFIG (the seeds' form)")
    for flag, key in TRAIN_FLAGS.items():
        parser.add_argument(flag, dest=flag_dest(flag), metavar="V", help=f"same as {key}=V")
    owners: dict[str, list[str]] = {}
    for name, recipe in recipes.items():
        for flag, key in recipe.train_flags.items():
            owners.setdefault(flag, []).append(f"{name}: {key}")
    group = parser.add_argument_group("recipe flags (mapped onto the config's recipe)")
    for flag, keys in sorted(owners.items()):
        group.add_argument(flag, dest=flag_dest(flag), metavar="V", help="same as " + ", ".join(keys) + "=V")


def build_parser() -> argparse.ArgumentParser:
    from kiln.recipes import RECIPES, get_recipe

    recipes = {name: get_recipe(name) for name in sorted(RECIPES)}
    parser = argparse.ArgumentParser(prog="kiln", description="Train, evaluate, export and inspect kiln recipes.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train a config (and evaluate the best model on the test split)",
                             description="Train CONFIG into a run directory; extra KEY=VALUE arguments override the config.")
    add_config_arguments(train, recipes)
    train.add_argument("--run-dir", "--output-dir", "--checkpoint-dir", dest="run_dir", type=Path,
                       help="where the run goes (default runs/<recipe>/<config>-<time>); --output-dir and --checkpoint-dir are the seeds' names")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the kiln run in --run-dir (only a directory holding a kiln run is ever deleted)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint (and phase)")
    train.add_argument("--init-from", metavar="CHECKPOINT", help="start from these weights (best_model.pt, a .ckpt or a run dir)")

    add_evaluate_verb(verbs, recipes)

    export = verbs.add_parser("export", help="export a run's model to ONNX, TorchScript or safetensors, checked against PyTorch")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"))
    export.add_argument("--out", type=Path, help="output file (default RUN/export/model.<ext>)")
    export.add_argument("--weights", choices=("best", "final"), default="best", help="best_model.pt (default) or final_model.pt")

    lr_find = verbs.add_parser("lr-find", help="learning-rate range test: loss vs an exponentially growing lr",
                               description="Train CONFIG briefly while the lr grows from --min-lr to --max-lr; writes lr_find.png and lr_find.json.")
    add_config_arguments(lr_find, recipes)
    lr_find.add_argument("--min-lr", type=float, default=1e-7)
    lr_find.add_argument("--max-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=int, default=100, help="optimizer steps (one lr each)")
    lr_find.add_argument("--out", type=Path, help="directory for lr_find.png/json (default runs/<recipe>/<config>-lr_find)")

    add_recipe_verbs(verbs, recipes)

    compare = verbs.add_parser("compare", help="plot one metric of several runs against epoch (e.g. --metric val_loss)")
    compare.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.add_argument("--metric", default="val_loss",
                         help="a history column (val_loss) or a seed-named column (\"Validation Loss\"); default val_loss")
    compare.add_argument("--out", type=Path, default=Path("compare.png"), help="the plot (PNG; default compare.png)")

    status = verbs.add_parser("status", help="show the state of runs (running, finished, interrupted, failed, dead)")
    status.add_argument("run_dirs", nargs="*", type=Path, help="run directories (default: every run under runs/)")

    add_run_tool_verbs(verbs)

    add_sweep_verb(verbs, recipes)

    logs = verbs.add_parser("logs", help="print a run's train.log")
    logs.add_argument("run_dir", type=Path)
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the run stops")
    return parser


def add_evaluate_verb(verbs, recipes: dict) -> None:
    """kiln evaluate, with the flags each recipe adds (nav's --map ...)."""
    evaluate = verbs.add_parser("evaluate", help="re-evaluate a run's best model and rewrite test_results.json and report/",
                                description="Evaluate RUN_DIR's best model on its test split again, or with --data on another "
                                            "dataset directory of its recipe (written beside the originals, never over them).")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", type=Path, metavar="DIR", help="another existing dataset directory of the run's recipe: "
                          "writes RUN/test_results_<name>.json and RUN/report_<name>/")
    evaluate.add_argument("--name", help="the <name> of --data's files (default: DIR's basename)")
    evaluate.set_defaults(option_dests={})
    for name, recipe in recipes.items():
        if recipe.evaluate_arguments is not None:
            before = {action.dest for action in evaluate._actions}
            recipe.evaluate_arguments(evaluate.add_argument_group(f"{name} runs"))
            evaluate.get_default("option_dests")[name] = [a.dest for a in evaluate._actions if a.dest not in before]


def add_recipe_verbs(verbs, recipes: dict) -> None:
    """kiln data <recipe> (each recipe's generator flags) and the tools a recipe brings (kiln printer compensate)."""
    data = verbs.add_parser("data", help="generate or convert a recipe's dataset directory")
    data_recipes = data.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name, recipe in recipes.items():
        sub = data_recipes.add_parser(name, help=f"{name} dataset")
        sub.add_argument("--out", "--output-dir", dest="out", type=Path, required=True, help="dataset directory to create")
        recipe.data_arguments(sub)

    for name, recipe in recipes.items():  # `kiln <recipe> <command>`: tools a recipe brings (e.g. kiln printer compensate)
        if recipe.commands:
            tools = verbs.add_parser(name, help=f"{name} tools: {', '.join(recipe.commands)}").add_subparsers(
                dest="command", required=True, metavar="COMMAND")
            for command, (add_arguments, run) in recipe.commands.items():
                add_arguments(tools.add_parser(command))
                tools.choices[command].set_defaults(run_command=run)


def add_sweep_verb(verbs, recipes: dict) -> None:
    """kiln sweep (docs/sweeps.md)."""
    sweep = verbs.add_parser("sweep", help="grid or TPE search over a config (Optuna), shared by many processes and machines",
                             description="Run every point of --grid, or --trials trials of a --space search, each as an "
                             "ordinary run directory under --out; CONFIG may also be a sweep file (sweeps/<recipe>/*.yaml). "
                             "See docs/sweeps.md.")
    add_config_arguments(sweep, recipes)
    sweep.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="grid axes; every point of their product runs once "
                       "(a KEY=V entry with one value fixes that key, like an override)")
    sweep.add_argument("--space", metavar="SPACE.yaml", help="search space: KEY: {choice: [...]} | {uniform: [lo, hi]} | "
                       "{log_uniform: [lo, hi]} | {int: [lo, hi]} | {log_int: [lo, hi]}")
    sweep.add_argument("--trials", type=int, help="trials of a --space search (all workers and machines together)")
    sweep.add_argument("--sampler", choices=("tpe", "random"), help="--space sampler (default tpe)")
    sweep.add_argument("--pruner", choices=("median", "hyperband", "none"),
                       help="stop poor trials at a validation (default: median for --space, none for --grid)")
    sweep.add_argument("--objective", help="the metric trials are ranked by (default train.monitor); test_* reads "
                       "test_results.json")
    sweep.add_argument("--direction", choices=("min", "max"), help="default train.mode (needed for another objective)")
    sweep.add_argument("--out", type=Path, help="the sweep directory (default runs/<recipe>/<config>-sweep-<time>)")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    sweep.add_argument("--storage", metavar="URL", help="an Optuna RDB URL shared by several machines, e.g. "
                       "postgresql://user@host/db (default: a journal file in --out)")
    sweep.add_argument("--retries", type=int, help="re-runs of a trial that failed with an exception (default 0)")
    sweep.add_argument("--heat-map", metavar="A,B", help="the two grid axes of plots/heat_map.png (default the first two)")
    sweep.add_argument("--resume", type=Path, metavar="DIR", help="continue the sweep in DIR")
    sweep.add_argument("--status", type=Path, metavar="DIR", help="print the table of the sweep in DIR; runs nothing")


def add_run_tool_verbs(verbs) -> None:
    """kiln runs, report, demo and tb: the tools over run directories (docs/runs.md)."""
    from kiln.engine.runs import COLUMNS, STATES

    runs = verbs.add_parser("runs", help="one table of every run under a folder: state, epochs, best, headline vs baseline",
                            description="Every run under DIR (default runs/; a sweep's --out too), one row each.")
    runs.add_argument("dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR")
    runs.add_argument("--recipe", help="only runs of this recipe")
    runs.add_argument("--status", choices=STATES, help="only runs in this state")
    runs.add_argument("--sort", metavar="METRIC", help=f"order by {', '.join(COLUMNS)} or a test metric such as mae "
                      "(ascending; best first for best and headline); --sort=-METRIC reverses")
    runs.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")

    report = verbs.add_parser("report", help="rewrite a run's report/report.md from its files (no training, no model run)")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--html", action="store_true", help="also write report/report.html, self-contained (images inlined)")

    demo = verbs.add_parser("demo", help="train every recipe's quick config, then one table against each baseline",
                            description="Train <config-dir>/<recipe>/quick.yaml of each recipe into runs/<recipe>/demo "
                                        "(replacing an earlier demo run); write the results table to runs/demo.md.")
    demo.add_argument("--recipes", help="comma-separated subset, e.g. nav,world (default: all)")
    demo.add_argument("--config-dir", type=Path, default=Path("configs"), help="where <recipe>/quick.yaml are (default configs)")

    tb = verbs.add_parser("tb", help="start TensorBoard on a folder of runs (or print the command to run)")
    tb.add_argument("dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR")


def collect_overrides(args: argparse.Namespace, recipe) -> list[str]:
    """Flags that map onto config keys, then KEY=VALUE overrides (which win)."""
    flags = {**TRAIN_FLAGS, **recipe.train_flags}
    for name, value in vars(args).items():
        flag = "--" + name.removeprefix("flag_").replace("_", "-")
        if name.startswith("flag_") and value is not None and flag not in flags:
            raise KilnError(f"{flag} is not a flag of the {recipe.name} recipe; set the config key instead (KEY=VALUE)")
    return [f"{key}={getattr(args, flag_dest(flag))}" for flag, key in flags.items()
            if getattr(args, flag_dest(flag), None) is not None] + list(args.overrides)


def config_path(args: argparse.Namespace) -> str:
    if args.config_flag and args.config and "=" not in args.config:
        raise KilnError("give the config once: either positional CONFIG or --config CONFIG")
    if args.config_flag:  # `--config FILE key=value`: the first override landed in the CONFIG slot
        if args.config:
            args.overrides.insert(0, args.config)
        return args.config_flag
    if not args.config:
        raise KilnError(f"kiln {args.verb} needs a CONFIG file, e.g. configs/nav/quick.yaml")
    return args.config


def run_config(run_dir: Path, overrides: list[str] = ()):
    from kiln.recipes import load_recipe_config

    if not (run_dir / "config.yaml").is_file():
        raise KilnError(f"'{run_dir}' is not a kiln run directory (no config.yaml); pass the --run-dir of a kiln train run")
    return load_recipe_config(run_dir / "config.yaml", list(overrides))


def train(args: argparse.Namespace) -> int:
    from kiln.engine.devices import is_worker_process
    from kiln.engine.rundir import default_run_dir
    from kiln.recipes import load_recipe_config, recipe_of

    if args.resume:
        if args.config and "=" in args.config:  # `kiln train --resume RUN train.max_epochs=20`
            args.overrides.insert(0, args.config)
        elif args.config or args.config_flag:
            raise KilnError("--resume continues a run with its own config.yaml; give KEY=VALUE overrides, not a CONFIG")
        run_dir = args.resume
        recipe, _ = run_config(run_dir)
        _, cfg = run_config(run_dir, collect_overrides(args, recipe))
    else:
        path = config_path(args)
        recipe = recipe_of(path)
        _, cfg = load_recipe_config(path, collect_overrides(args, recipe))
        run_dir = args.run_dir or default_run_dir(cfg.recipe, cfg.name)

    from kiln.engine.fit import fit

    results = fit(cfg, recipe, run_dir, resume=bool(args.resume), init_from=args.init_from, overwrite=args.overwrite)
    if results.get("state") == "interrupted":
        return 0 if is_worker_process() else 130  # a DDP launcher takes a worker's non-zero exit for a crash
    if not is_worker_process():
        from kiln.engine.monitor import print_results

        print_results(results, f"test results: {run_dir}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from kiln.engine.devices import set_threads
    from kiln.engine.monitor import print_results
    from kiln.engine.evaluate import evaluate_run

    recipe, cfg = run_config(args.run_dir)
    set_threads(cfg.train.threads)  # as kiln train does: small models on a busy CPU crawl with spare threads spinning
    # recipe flags default to None, so `options` holds only what was given: an extra evaluation
    options = {dest: getattr(args, dest) for dest in args.option_dests.get(recipe.name, []) if getattr(args, dest) is not None}
    others = [dest for name, dests in args.option_dests.items() if name != recipe.name for dest in dests
              if getattr(args, dest) is not None and dest not in args.option_dests.get(recipe.name, [])]
    if others:
        raise KilnError(f"--{others[0].replace('_', '-')} is not a flag of {recipe.name} runs")
    if args.data is not None:
        if options:
            raise KilnError(f"--data and --{next(iter(options)).replace('_', '-')} are two evaluations; give one")
        from kiln.engine.evaluate import evaluate_on_data

        results, name = evaluate_on_data(args.run_dir, recipe, cfg, args.data, args.name)
        print_results(results, f"{args.data}: {args.run_dir}")
        print(f"Wrote {args.run_dir / f'test_results_{name}.json'} and {args.run_dir / f'report_{name}'}/")
        return 0
    if args.name is not None:
        raise KilnError("--name names the files of an evaluation on --data DIR; give --data too")
    results = evaluate_run(args.run_dir, recipe, cfg, options=options or None)
    print_results(results, f"{results.get('name', 'test results')}: {args.run_dir}")
    return 0


def export(args: argparse.Namespace) -> int:
    import json

    from kiln.engine.export import export_run

    recipe, cfg = run_config(args.run_dir)
    result = export_run(args.run_dir, recipe, cfg, args.format, args.out, weights=f"{args.weights}_model.pt")
    print(json.dumps(result))
    return 0


def lr_find(args: argparse.Namespace) -> int:
    import json

    from kiln.engine.lr_find import lr_range_test
    from kiln.recipes import load_recipe_config, recipe_of

    path = config_path(args)
    recipe = recipe_of(path)
    _, cfg = load_recipe_config(path, collect_overrides(args, recipe))
    out = args.out or Path("runs") / cfg.recipe / f"{cfg.name}-lr_find"
    result = lr_range_test(cfg, recipe, out, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    print(json.dumps(result))
    return 0


def data(args: argparse.Namespace) -> int:
    from kiln.recipes import get_recipe

    get_recipe(args.recipe).make_data(args)
    return 0


def compare(args: argparse.Namespace) -> int:
    import json

    from kiln.engine.compare import compare_runs

    result = compare_runs(args.run_dirs, args.metric, args.out)
    for run, row in result["runs"].items():
        print(f"{run}: last {row['last']}, lowest {row['min']} at epoch {row['min_epoch']} ({row['epochs']} epochs)")
    print(f"Wrote {args.out}")
    print(json.dumps(result))
    return 0


def status(args: argparse.Namespace) -> int:
    from kiln.engine.runs import print_status
    from kiln.engine.runs import find_runs

    print_status(args.run_dirs or (find_runs(Path("runs")) if Path("runs").is_dir() else []))
    return 0


def all_recipes() -> dict:
    from kiln.recipes import RECIPES, get_recipe

    return {name: get_recipe(name) for name in RECIPES}


def runs(args: argparse.Namespace) -> int:
    import json

    from kiln.engine.runs import list_runs, print_runs

    rows = list_runs(args.dir, all_recipes(), recipe=args.recipe, state=args.status, sort=args.sort)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_runs(rows, args.dir)
    return 0


def report(args: argparse.Namespace) -> int:
    import json

    from kiln.engine.report import write_run_report
    from kiln.engine.runs import headline_of

    recipe, _ = run_config(args.run_dir)
    results_file = args.run_dir / "test_results.json"
    headline = headline_of(recipe, json.loads(results_file.read_text())) if results_file.is_file() else None
    written = write_run_report(args.run_dir, headline, html_too=args.html)
    print(f"Wrote {written}" + (f" and {written.with_suffix('.html')}" if args.html else ""))
    return 0


def demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from kiln.engine.demo import RECIPE_ORDER, run_demo, write_demo_report

    recipes = all_recipes()
    names = [n for n in RECIPE_ORDER if n in recipes] + sorted(set(recipes) - set(RECIPE_ORDER))
    if args.recipes:
        names = [n.strip() for n in args.recipes.split(",") if n.strip()]
        unknown = [n for n in names if n not in recipes]
        if unknown or not names:
            raise KilnError(f"--recipes: unknown recipe '{unknown[0] if unknown else args.recipes}'; available: {', '.join(sorted(recipes))}")
    results = run_demo(names, recipes, args.config_dir)
    table = write_demo_report(results, Path("runs") / "demo.md")
    Console(width=max(Console().width, 160)).print(Markdown(table))
    print("Wrote runs/demo.md")
    return 1 if any(r.error for r in results) else 0


def tb(args: argparse.Namespace) -> int:
    from kiln.engine.monitor import start_tensorboard

    return start_tensorboard(args.dir)


def sweep(args: argparse.Namespace) -> int:
    from kiln.recipes import recipe_of
    from kiln.sweep import launch

    if args.workers < 1 or (args.retries is not None and args.retries < 0):
        raise KilnError("--workers must be at least 1 and --retries at least 0")
    given = [name for name in ("config", "config_flag", "grid", "space", "objective", "direction", "sampler", "pruner",
                               "out") if getattr(args, name)] + (["overrides"] if args.overrides else [])
    if args.status or args.resume:
        if given or (args.status and args.resume):
            raise KilnError("--resume DIR and --status DIR take the sweep as it was defined; give only --workers, "
                            "--trials, --retries, --storage or --heat-map")
        if args.status:
            return launch.status(args.status, args.storage)
        return launch.resume(args.resume, workers=args.workers, storage=args.storage, trials=args.trials,
                             retries=args.retries, heat_map=args.heat_map)
    path = config_path(args)
    return launch.start(path, collect_overrides(args, recipe_of(launch.config_file(path))), out=args.out,
                        workers=args.workers, storage=args.storage, heat_map=args.heat_map, grid=args.grid,
                        space=args.space, trials=args.trials, objective=args.objective, direction=args.direction,
                        sampler=args.sampler, pruner=args.pruner, retries=args.retries)


def logs(args: argparse.Namespace) -> int:
    from kiln.engine.monitor import follow_log

    follow_log(args.run_dir, follow=args.follow)
    return 0


VERBS = {"train": train, "evaluate": evaluate, "export": export, "lr-find": lr_find, "data": data, "compare": compare, "status": status, "sweep": sweep, "logs": logs,
         "runs": runs, "report": report, "demo": demo, "tb": tb}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after flags (`kiln train CFG --run-dir D train.lr=1e-3`), which argparse
    # does not gather into one positional list, so collect the leftovers here.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.verb in ("train", "lr-find")
    unknown = [item for item in extra if not takes_overrides or item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    try:
        if args.verb not in VERBS:  # a recipe's own command
            return args.run_command(args) or 0
        return VERBS[args.verb](args)
    except KilnError as err:
        print(f"kiln: error: {' '.join(str(err).split(chr(10)))}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:  # before training started (data generation, imports): nothing to save
        print("kiln: interrupted", file=sys.stderr)
        return 130
