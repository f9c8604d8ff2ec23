"""`kiln sweep`: check the whole sweep, create (or join) its study, start the local workers, watch, report.

    start()    kiln sweep CONFIG --grid ... | --space FILE --trials N, or kiln sweep SWEEP_FILE
    resume()   kiln sweep --resume DIR: queue what is missing, run the rest
    status()   kiln sweep --status DIR: the table, running nothing

Nothing is written until the base config, every grid point or space entry, the objective, the --out directory and
the --storage URL have passed. The sweep directory (--out) holds sweep.json + config.yaml (what the sweep is),
study.journal (the default storage), trial_NNNN/ (one ordinary run directory per trial), results.csv, plots/,
sweep.log (this console) and workers/ (each worker's console).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.engine.progress import Progress
from kiln.errors import KilnError
from kiln.sweep.report import best_lines, print_table, summary, trial_rows, write_plots, write_results
from kiln.sweep.space import Sweep, grid_axes, is_sweep_file, make_sweep, override, read_space_file, read_sweep_file, \
    split_fixed
from kiln.sweep.study import CONFIG_FILE, SWEEP_FILE, Watchdog, create_or_join, enqueue_missing, masked, open_storage, \
    open_sweep, read_sweep, save_sweep, this_host
from kiln.sweep.worker import STORAGE_ENV

POLL_S = 1.0


def config_file(path: str) -> str:
    """The run config behind CONFIG: the file itself, or a sweep file's config:."""
    return read_sweep_file(path).config if is_sweep_file(path) else path


def define(path: str, overrides: list[str], *, grid: list[str] | None, space: str | None, trials: int | None,
           objective: str | None, direction: str | None, sampler: str | None, pruner: str | None, retries: int | None,
           log=print) -> Sweep:
    """The sweep a command line asks for (CONFIG with --grid/--space, or a sweep file), validated whole."""
    if is_sweep_file(path):
        if grid or space:
            raise KilnError(f"'{path}' is a sweep file with its own grid or space; give --grid/--space with a run config")
        spec = read_sweep_file(path)
        if (spec.grid is None) == (spec.space is None):
            raise KilnError(f"sweep file '{path}' needs exactly one of grid: or space:")
        path, overrides, space = spec.config, spec.overrides + overrides, spec.space
        axes = spec.grid
        trials, objective, direction = trials or spec.trials, objective or spec.objective, direction or spec.direction
    else:
        axes, space = grid_axes(grid) if grid else None, read_space_file(space) if space else None
    axes, fixed = split_fixed(axes) if axes is not None else (None, [])
    return make_sweep(path, overrides + fixed, grid=axes, space=space, trials=trials, objective=objective,
                      direction=direction, sampler=sampler, pruner=pruner, retries=retries or 0, log=log)


def describe(sweep: Sweep) -> str:
    if sweep.grid is not None:
        return "grid " + " x ".join(f"{k}={','.join(map(str, v))}" for k, v in sweep.grid.items())
    return f"{sweep.sampler} search over {', '.join(sweep.space)}"


def check_out(out: Path, sweep: Sweep) -> bool:
    """--out may hold nothing, or this same sweep (True: join it). Another sweep there is a one-line error."""
    from kiln.engine.files import refuse_file_in_path

    refuse_file_in_path(out, "--out")
    if (out / SWEEP_FILE).is_file():
        saved, _ = read_sweep(out)
        if saved.fingerprint() != sweep.fingerprint():
            raise KilnError(f"--out {out} holds another sweep ({describe(saved)} on {saved.source}); pass another --out, "
                            f"or continue that one with kiln sweep --resume {out}")
        return True
    if out.is_dir() and any(out.iterdir()):
        raise KilnError(f"--out {out} is not empty and holds no kiln sweep; pass another --out")
    return False


def check_heat_map(sweep: Sweep, heat_map: str | None) -> tuple[str, str] | None:
    if heat_map is None:
        return None
    keys = tuple(k.strip() for k in heat_map.split(","))
    if sweep.grid is None or len(keys) != 2 or any(k not in sweep.grid for k in keys) or keys[0] == keys[1]:
        axes = ", ".join(sweep.grid or []) or "none: it is not a grid sweep"
        raise KilnError(f"--heat-map {heat_map} must name two grid axes as A,B; the axes are {axes}")
    return keys


def threads_per_worker(cfg_threads: int | None, workers: int) -> tuple[int, str]:
    """train.threads for each trial so that `workers` trials at once use this machine's cores and no more."""
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // workers)
    threads = min(cfg_threads, share) if cfg_threads else share
    line = f"{workers} worker{'s' if workers > 1 else ''} on {cores} cores: train.threads={threads} in every trial"
    if cfg_threads and cfg_threads > share:
        line += f" (the config's {cfg_threads} would oversubscribe the cores)"
    if workers > cores:
        line += f"; more workers than cores, so they share them"
    return threads, line


def start(path: str, overrides: list[str], *, out: Path | None, workers: int, storage: str | None,
          heat_map: str | None, **definition: Any) -> int:
    """kiln sweep CONFIG ...: validate, write the sweep directory, create or join the study, run it."""
    sweep = define(path, overrides, **definition)
    axes = check_heat_map(sweep, heat_map)
    out = Path(out or Path("runs") / sweep.recipe / f"{Path(path).stem}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    joining = check_out(out, sweep)
    backend = open_storage(storage, out) if storage else None  # a server that cannot be reached: before any write
    from kiln.engine.files import make_dirs
    from kiln.engine.rundir import RunLog

    make_dirs(out)
    log = RunLog(out / "sweep.log")
    if not joining:
        save_sweep(out, sweep, storage)
    log(f"kiln sweep {'joins' if joining else 'starts'} {out}: {describe(sweep)} on {sweep.source}, objective "
        f"{sweep.objective} ({sweep.direction}), pruner {sweep.pruner}, storage {masked(storage) or out / 'study.journal'}")
    study = create_or_join(backend or open_storage(None, out), sweep, log)
    return run(study, sweep, out, workers, storage, axes, log)


def resume(sweep_dir: Path, *, workers: int, storage: str | None, trials: int | None, retries: int | None,
           heat_map: str | None) -> int:
    """kiln sweep --resume DIR: the points no trial holds are queued, dead trials re-queued, the rest run."""
    from kiln.engine.rundir import RunLog

    sweep, study = open_sweep(sweep_dir, storage)
    if trials is not None:
        if sweep.grid is not None:
            raise KilnError("--trials is for --space searches; a grid runs each of its points once")
        if trials < sweep.trials:
            raise KilnError(f"--trials {trials} is fewer than the {sweep.trials} this sweep has queued already")
        sweep.trials = trials
    sweep.retries = sweep.retries if retries is None else retries
    axes = check_heat_map(sweep, heat_map)
    log = RunLog(sweep_dir / "sweep.log")
    _, saved_url = read_sweep(sweep_dir)
    save_sweep(sweep_dir, sweep, storage or saved_url)
    log(f"kiln sweep resumes {sweep_dir}: {describe(sweep)}")
    enqueue_missing(study, sweep, log)
    return run(study, sweep, sweep_dir, workers, storage or saved_url, axes, log)


def status(sweep_dir: Path, storage: str | None) -> int:
    """kiln sweep --status DIR: the table and the best trial so far; nothing runs and nothing is written."""
    sweep, study = open_sweep(sweep_dir, storage)
    rows = trial_rows(study, sweep)
    for row in rows:
        if row["state"] == "running" and row["run_dir"]:
            row["error"] = progress(sweep_dir / row["run_dir"])
    print_table(rows, sweep, f"{sweep_dir}: {describe(sweep)}")
    for line in best_lines(study, sweep, sweep_dir):
        print(line)
    print_summary(rows, study)
    return 0


def progress(run_dir: Path) -> str | None:
    import json

    try:
        s = json.loads((run_dir / "status.json").read_text())
        return f"epoch {s.get('epoch')}/{s.get('max_epochs')}" + (f", phase {s['phase']}" if s.get("phase") else "")
    except (OSError, ValueError):
        return None


def run(study, sweep: Sweep, sweep_dir: Path, workers: int, storage: str | None, heat_map, log) -> int:
    """Make the data, start the local workers, watch them, then write results.csv and the plots and print the table.
    0 when every point is done; 1 when some are left (all workers stopped: --resume continues)."""
    from kiln.recipes import load_recipe_config

    _, base = load_recipe_config(sweep_dir / CONFIG_FILE)
    prepare_data(sweep, sweep_dir, log)
    threads, line = threads_per_worker(base.train.threads, workers)
    log(line)
    processes = start_workers(sweep_dir, workers, threads, storage)
    try:
        watch(study, sweep, sweep_dir, processes, log)
    except KeyboardInterrupt:
        log("Interrupted: the workers save their runs and queue their trials again (a second Ctrl-C stops them at once)")
        for process in processes:
            process.wait()
    rows = trial_rows(study, sweep)
    write_results(sweep_dir / "results.csv", rows, sweep)
    for line in write_plots(study, sweep, rows, sweep_dir / "plots", heat_map):
        log(line)
    print_table(rows, sweep, f"{sweep_dir}: {describe(sweep)}")
    for line in best_lines(study, sweep, sweep_dir):
        log(line)
    counts = print_summary(rows, study)
    left = counts["waiting"] + counts["running"]
    if left:
        log(f"{left} trials are not finished and no worker here is running: continue with kiln sweep --resume {sweep_dir}")
    return 1 if left else 0


def print_summary(rows, study) -> dict[str, Any]:
    import json

    counts = summary(rows, study)
    print(json.dumps(counts))
    return counts


def prepare_data(sweep: Sweep, sweep_dir: Path, log) -> None:
    """Make each dataset the trials read once, here, before workers would race to generate the same data.dir."""
    from kiln.recipes import get_recipe, load_recipe_config

    recipe = get_recipe(sweep.recipe)
    done = set()
    for point in sweep.points() if sweep.grid is not None else [{}]:
        _, cfg = load_recipe_config(sweep_dir / CONFIG_FILE, [override(k, v) for k, v in point.items()])
        key = cfg.data.model_dump_json()
        if key not in done:
            done.add(key)
            recipe.prepare_data(cfg, log)


def start_workers(sweep_dir: Path, count: int, threads: int, storage: str | None) -> list[subprocess.Popen]:
    """`count` worker processes, each writing its console to sweep_dir/workers/<host>-<k>.log."""
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    if storage:
        env[STORAGE_ENV] = storage  # not on the command line, where ps would show a password
    logs = sweep_dir / "workers"
    logs.mkdir(exist_ok=True)
    host = this_host().split(":")[0]
    processes = []
    for k in range(1, count + 1):
        with open(logs / f"{host}-{k}.log", "a") as console:
            processes.append(subprocess.Popen([sys.executable, "-m", "kiln.sweep.worker", str(sweep_dir), "--threads",
                                               str(threads)], stdout=console, stderr=subprocess.STDOUT, env=env))
    return processes


def watch(study, sweep: Sweep, sweep_dir: Path, processes: list[subprocess.Popen], log) -> None:
    """Until every local worker has exited: say what each trial does, keep results.csv current, re-queue the trials of
    dead workers, and pass a SIGTERM on to the workers (they save and re-queue)."""
    watchdog = Watchdog()
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    running = set(processes)

    def pass_on(signum, frame) -> None:
        for process in running:
            process.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    left_at_start = trials_left(study)
    try:
        with Progress("Sweep trials", left_at_start, log) as progress:
            while running:
                lines = watchdog.requeue_dead(study) + trial_events(study, sweep, states)
                for line in lines:
                    log(line)
                if lines:
                    write_results(sweep_dir / "results.csv", trial_rows(study, sweep), sweep)
                progress.advance(max(0, left_at_start - trials_left(study) - progress.done))
                for process in [p for p in running if p.poll() is not None]:
                    running.discard(process)
                    if process.returncode:
                        log(f"Worker pid {process.pid} stopped ({exit_reason(process.returncode)}); "
                            f"see {sweep_dir / 'workers'}")
                time.sleep(POLL_S)
        for line in trial_events(study, sweep, states):
            log(line)
    finally:
        signal.signal(signal.SIGTERM, previous)


def trials_left(study) -> int:
    """Trials queued or running (a retry of a failed one counts from when it is queued)."""
    return sum(t.state.name in ("WAITING", "RUNNING") for t in study.get_trials(deepcopy=False))


def exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return {2: "an error", 130: "interrupted"}.get(code, f"exit code {code}")


def trial_events(study, sweep: Sweep, states: dict[int, str]) -> list[str]:
    """One line per trial whose state changed since the last call (`states` keeps what was seen)."""
    lines = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if states.get(t.number) == state:
            continue
        states[t.number] = state
        attrs = t.user_attrs
        params = ", ".join(f"{k}={v}" for k, v in (t.params or t.system_attrs.get("fixed_params", {})).items())
        if state == "RUNNING":
            lines.append(f"Trial {t.number} running" + (f": {params}" if params else ""))
        elif state == "COMPLETE":
            lines.append(f"Trial {t.number} finished: {sweep.objective} {t.value:.4f} (best epoch "
                         f"{attrs.get('best_epoch')}, {t.duration.total_seconds():.0f} s) {params}")
        elif state == "PRUNED":
            lines.append(f"Trial {t.number} pruned at validation {t.last_step}: {params}")
        elif state == "FAIL" and attrs.get("error"):
            lines.append(f"Trial {t.number} failed: {attrs['error']}")
        elif state == "WAITING" and "retry_of" in attrs:
            lines.append(f"Trial {t.number} queued: re-runs trial {attrs['retry_of']} ({attrs.get('retry_reason')})")
    return lines
