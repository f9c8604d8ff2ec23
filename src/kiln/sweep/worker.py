"""One sweep worker: take WAITING trials from the study until none is left, and train each as an ordinary run.

    python -m kiln.sweep.worker SWEEP_DIR --threads T     (started by kiln sweep; the storage URL, if any, comes in
                                                           the environment variable KILN_SWEEP_STORAGE)

A trial is a run directory SWEEP_DIR/trial_NNNN trained by kiln.engine.fit with one more callback, which reports the
objective to the pruner at every validation and ends the run there when the pruner says so. A trial that re-runs a
failed or dead one continues that trial's run directory (kiln train --resume), or only reads its results when it had
finished. Exceptions: NaN/inf (NonFinite) fails the trial for good; any other exception fails it and re-queues it
while the sweep's --retries allow; Ctrl-C/SIGTERM re-queues it (the run is saved) and stops the worker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kiln.engine.callbacks import Callback
from kiln.errors import KilnError
from kiln.sweep.space import Sweep, override
from kiln.sweep.study import HEARTBEAT_S, STALE_AFTER_S, CONFIG_FILE, Watchdog, enqueue_retry, fail_trial, open_sweep, \
    optuna, pop_waiting, this_host

POLL_S = 1.0            # how often an idle worker looks for re-queued trials while others still run
STORAGE_ENV = "KILN_SWEEP_STORAGE"


class TrialLost(Exception):
    """Another process took this worker for dead and re-queued its trial: stop training it."""


class ObjectiveMissing(KilnError):
    """The objective is not a metric of these runs: no trial of the sweep can be scored."""


class Heartbeat:
    """A thread that bumps the trial's `beat` every HEARTBEAT_S; `lost` once the trial was finished by someone else."""

    def __init__(self, trial):
        self.trial, self.lost = trial, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        count = 0
        while not self.stop.wait(HEARTBEAT_S):
            count += 1
            try:
                self.trial.set_user_attr("beat", count)
            except optuna().exceptions.UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception:  # a storage hiccup: the next beat tries again, and the grace period is 6 beats long
                continue

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class ReportToPruner(Callback):
    """The sweep's hook in the training loop: report `metric` at every validation (step = validations so far, counted
    across phases) and stop the run there when the pruner says so; later phases of a pruned run do not train."""

    def __init__(self, trial, metric: str | None, heartbeat: Heartbeat, pruner: str):
        self.trial, self.metric, self.heartbeat, self.pruner = trial, metric, heartbeat, pruner
        self.phase_dir: Path | None = None
        self.offset = self.step = 0
        self.pruned = False

    def on_start(self, run) -> None:
        if self.pruned:
            run.stop_reason = "pruned"

    def on_validation(self, run, row: dict[str, Any], improved: bool) -> None:
        if self.heartbeat.lost:
            raise TrialLost(f"trial {self.trial.number} was re-queued by another process")
        if run.run_dir != self.phase_dir:  # a new phase: its history starts again
            self.phase_dir, self.offset = run.run_dir, self.step
        self.step = self.offset + len(run.state.history)
        if self.metric is None:
            return
        if self.metric not in row:
            raise ObjectiveMissing(f"the sweep's objective {self.metric} is not a metric of these runs; they log "
                                   f"{', '.join(k for k in row if k.startswith(('train_', 'val_')))}")
        value = row[self.metric]
        if not math.isfinite(value):
            return
        self.trial.report(value, self.step)
        if self.trial.should_prune():
            self.pruned, run.stop_reason = True, "pruned"
            run.log(f"Pruned by the sweep's {self.pruner} pruner at validation {self.step}: {self.metric} {value:.4f}")


def reported_metric(sweep: Sweep) -> str | None:
    """What the pruner sees each validation: the objective itself, or for a test_X objective the same metric on the
    validation split (val_X; the test split is measured only at the end)."""
    if sweep.objective.startswith("test_"):
        return None if sweep.pruner == "none" else "val_" + sweep.objective.removeprefix("test_")
    return sweep.objective


def last_phase_dir(run_dir: Path, cfg) -> Path:
    return run_dir / f"phase_{len(cfg.phases)}" if cfg.phases else run_dir


def kept_row(run_dir: Path, cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """(status.json, history row) of the model a finished run keeps (best_model.pt: its last phase's best validation)."""
    phase_dir = last_phase_dir(run_dir, cfg)
    status = json.loads((phase_dir / "status.json").read_text())
    history = json.loads((phase_dir / "history.json").read_text())
    rows = [dict(zip(history, values)) for values in zip(*history.values())]
    return status, next(row for row in reversed(rows) if row["epoch"] == status["best_epoch"])


def objective_value(sweep: Sweep, results: dict[str, Any], row: dict[str, Any]) -> float:
    """The kept model's objective: its history row's value, or for test_X the test result X (test_results.json)."""
    name = sweep.objective
    if name.startswith("test_"):
        key = name if name in results else name.removeprefix("test_")
        if key not in results:
            raise ObjectiveMissing(f"the sweep's objective {name} is not in test_results.json; it has "
                                   f"{', '.join(k for k, v in results.items() if isinstance(v, (int, float)))}")
        return float(results[key])
    if name not in row:
        raise ObjectiveMissing(f"the sweep's objective {name} is not a metric of these runs; they log "
                               f"{', '.join(k for k in row if k.startswith(('train_', 'val_')))}")
    return float(row[name])


def finished_results(run_dir: Path, cfg, log) -> dict[str, Any] | None:
    """test_results.json of a run that had been evaluated before its worker died (before it told the study). Killed
    while writing its report (after test_results.json), a run stays "evaluating", which kiln train --resume refuses as
    already trained: its results stand, and kiln evaluate RUN rewrites the report."""
    phase_dir = last_phase_dir(run_dir, cfg)
    try:
        state = json.loads((phase_dir / "status.json").read_text()).get("state")
        results = json.loads((phase_dir / "test_results.json").read_text())
    except (OSError, ValueError):
        return None
    if state == "evaluating":
        log(f"{run_dir} was evaluated but stopped while writing its report: using its test_results.json "
            f"(kiln evaluate {run_dir} rewrites the report)")
    return results if state in ("finished", "evaluating") else None


def wait_until_free(run_dir: Path, log) -> None:
    """A run directory still locked by a worker taken for dead (it stops at its next validation): wait for it."""
    from kiln.engine.rundir import lock_held

    deadline = time.monotonic() + STALE_AFTER_S
    if lock_held(run_dir):
        log(f"{run_dir} is still held by the worker that lost it; waiting for it to stop")
    while lock_held(run_dir) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def train_trial(sweep: Sweep, sweep_dir: Path, trial, threads: int | None, heartbeat: Heartbeat, log) -> dict[str, Any]:
    """Train (or continue, or just read) the trial's run; returns the user attributes to record."""
    from kiln.engine.fit import fit
    from kiln.recipes import load_recipe_config

    params = sweep.suggest(trial)
    run_name = trial.user_attrs["run_dir"]
    run_dir = sweep_dir / run_name
    overrides = [override(k, v) for k, v in params.items()] + [f"name={sweep.config['name']}-{run_name}"]
    recipe, cfg = load_recipe_config(sweep_dir / CONFIG_FILE, overrides + ([f"train.threads={threads}"] if threads else []))
    log(f"Trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items()) + f" in {run_dir}")
    results = finished_results(run_dir, cfg, log)
    if results is None:
        wait_until_free(run_dir, log)
        callback = ReportToPruner(trial, reported_metric(sweep), heartbeat, sweep.pruner)
        results = fit(cfg, recipe, run_dir, resume=(run_dir / "run.json").is_file(), callbacks=(callback,))
        if results.get("state") == "interrupted":
            raise KeyboardInterrupt
    status, row = kept_row(run_dir, cfg)
    return {"objective": objective_value(sweep, results, row), "best_epoch": status.get("best_epoch"),
            "stop_reason": status.get("stop_reason")}


def run_trial(study, trial, sweep: Sweep, sweep_dir: Path, threads: int | None, log) -> None:
    """One trial from pop to tell. Raises KeyboardInterrupt (after re-queueing the trial) and ObjectiveMissing."""
    trial.set_user_attr("worker", {"host": this_host(), "pid": os.getpid()})
    if "run_dir" not in trial.user_attrs:  # a re-run keeps the run directory of the trial it re-runs
        trial.set_user_attr("run_dir", f"trial_{trial.number:04d}")
    with Heartbeat(trial) as heartbeat:
        try:
            attrs = train_trial(sweep, sweep_dir, trial, threads, heartbeat, log)
        except TrialLost as err:
            log(f"Trial {trial.number}: {err}; this worker stopped training it")
            return
        except KeyboardInterrupt:
            if fail_trial(study, trial.number):
                enqueue_retry(study, study.trials[trial.number], "interrupted", exception_retry=False)
            raise
        except Exception as err:
            record_failure(study, trial, sweep, err, log)
            if isinstance(err, ObjectiveMissing):  # every other trial would fail the same way
                raise
            return
    try:
        tell_result(study, trial, sweep, attrs)
    except optuna().exceptions.UpdateFinishedTrialError:
        log(f"Trial {trial.number} was re-queued by another process as it finished; its run stays in "
            f"{sweep_dir / trial.user_attrs['run_dir']}")


def record_failure(study, trial, sweep: Sweep, err: Exception, log) -> None:
    """FAIL with the one-line error; re-queue while --retries allow, except for NaN/inf, which would come again."""
    from kiln.engine.loop import NonFinite, one_line

    retries = trial.user_attrs.get("retries", 0)
    final = isinstance(err, (NonFinite, ObjectiveMissing))  # kiln's own, and the same on every retry
    again = not final and retries < sweep.retries
    trial.set_user_attr("error", one_line(err) if final else f"{type(err).__name__}: {one_line(err)}")
    if fail_trial(study, trial.number) and again:
        new = enqueue_retry(study, study.trials[trial.number], f"retry {retries + 1} of {sweep.retries} after: "
                            f"{one_line(err)}", exception_retry=True)
        log(f"Trial {trial.number} failed ({one_line(err)}); re-queued as trial {new}")


def tell_result(study, trial, sweep: Sweep, attrs: dict[str, Any]) -> None:
    """COMPLETE with the objective, PRUNED (its objective kept as an attribute), or FAIL for a NaN objective."""
    TrialState = optuna().trial.TrialState
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if attrs["stop_reason"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif math.isfinite(attrs["objective"]):
        study.tell(trial, attrs["objective"])
    else:
        trial.set_user_attr("error", f"the objective {sweep.objective} is {attrs['objective']}")
        study.tell(trial, state=TrialState.FAIL)


def run_worker(sweep_dir: Path, threads: int | None, storage_url: str | None = None, log=print) -> int:
    """Take trials until the queue is empty and no other worker runs one that may still come back."""
    TrialState = optuna().trial.TrialState
    sweep, study = open_sweep(sweep_dir, storage_url)
    watchdog = Watchdog()
    while True:
        for line in watchdog.requeue_dead(study):
            log(line)
        trial = pop_waiting(study)
        if trial is not None:
            run_trial(study, trial, sweep, sweep_dir, threads, log)
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(POLL_S)
        else:
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.sweep.worker", description="one kiln sweep worker")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--threads", type=int, help="train.threads of every trial this worker runs")
    args = parser.parse_args(argv)
    try:
        return run_worker(args.sweep_dir, args.threads, os.environ.get(STORAGE_ENV))
    except KilnError as err:
        print(f"kiln: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiln sweep worker: interrupted; its trial is queued again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
