"""The Optuna study behind a sweep: its storage, its queue of points, and what keeps each point to one run.

    storage    a JournalStorage file in the sweep directory by default (appends under a lock file that is safe for
               many processes and for NFS: no server, no SQLite "database is locked"), or any RDB URL
               (postgresql://..., mysql://..., sqlite:///...) that several machines share
    queue      the process that creates the study queues every point once as a WAITING trial (user attribute
               `point`); workers only ever take WAITING trials, through the storage's atomic pop, so two workers
               never get the same trial and no worker samples a point of its own (GridSampler alone gives parallel
               workers the same point: Optuna #2039, #4627)
    failure    a trial ends FAIL exactly once (a finished trial cannot be changed, so of two processes failing it
               one wins); only the winner queues the same parameters again as a new WAITING trial, which
               continues the dead trial's run directory. A worker marks its trial alive with a heartbeat
               (user attribute `beat`); a trial whose worker is gone (same machine: its pid is dead; another
               machine: its beat has not moved for STALE_AFTER_S) is failed and re-queued.
"""

from __future__ import annotations

import platform
import time
import warnings
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.sweep.space import Sweep

HEARTBEAT_S = 10      # a worker bumps its trial's `beat` this often
STALE_AFTER_S = 60    # a beat that has not moved for this long (watched from another machine) means the worker died
JOURNAL = "study.journal"
SWEEP_FILE = "sweep.json"   # the sweep (all but its base config), its study and storage
CONFIG_FILE = "config.yaml"  # the base config every trial loads, with its point's overrides


def optuna():
    """optuna, with its experimental-feature warnings off (kiln relies only on behaviour its tests pin)."""
    import optuna as _optuna

    warnings.filterwarnings("ignore", category=_optuna.exceptions.ExperimentalWarning)
    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    return _optuna


def masked(url: str | None) -> str | None:
    """The storage URL without its password (what sweep.json and the console show)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can read: open_storage says so
        return url


def open_storage(url: str | None, sweep_dir: Path):
    """The study's storage: the journal file in `sweep_dir`, or the RDB at `url`; one line if it cannot be opened."""
    op = optuna()
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        return op.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    # SQLite: wait for the file lock instead of failing at once (Optuna #820); servers: drop dead pooled connections
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return op.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, ImportError):  # sqlalchemy names the driver it wanted in the cause
            text = f"its database driver is missing ({err.__cause__ or err}); for PostgreSQL: pip install 'psycopg[binary]'"
        raise KilnError(f"--storage {masked(url)} cannot be opened: {text}") from None


def study_name(sweep: Sweep) -> str:
    """The same sweep gets the same study name on every machine, so `kiln sweep ... --storage URL` run on each of them
    joins one study; another grid or config gets another study."""
    return f"kiln-{sweep.recipe}-{sweep.config['name']}-{sweep.fingerprint()}"


def sampler_for(sweep: Sweep):
    op = optuna()
    if sweep.sampler == "grid":  # the queue holds every point; the sampler only serves tools that read the study
        return op.samplers.GridSampler(sweep.grid)
    if sweep.sampler == "random":
        return op.samplers.RandomSampler()
    # constant_liar: a worker sampling while others run treats their trials as done badly, so it does not pick
    # the same region again (Optuna's advice for parallel TPE)
    return op.samplers.TPESampler(constant_liar=True)


def pruner_for(sweep: Sweep):
    op = optuna()
    return {"median": op.pruners.MedianPruner, "hyperband": op.pruners.HyperbandPruner,
            "none": op.pruners.NopPruner}[sweep.pruner]()


def load_study(storage, sweep: Sweep):
    op = optuna()
    try:
        return op.load_study(study_name=study_name(sweep), storage=storage, sampler=sampler_for(sweep),
                             pruner=pruner_for(sweep))
    except KeyError:
        raise KilnError(f"the storage holds no study {study_name(sweep)}; start the sweep with kiln sweep CONFIG ...") from None


def create_or_join(storage, sweep: Sweep, log=print):
    """Create the study and queue every point, or join the study another process created (and wait for its queue)."""
    op = optuna()
    direction = "minimize" if sweep.direction == "min" else "maximize"
    try:
        study = op.create_study(study_name=study_name(sweep), storage=storage, direction=direction,
                                sampler=sampler_for(sweep), pruner=pruner_for(sweep))
    except op.exceptions.DuplicatedStudyError:
        study = load_study(storage, sweep)
        wait_for_queue(study)
        return study
    enqueue(study, sweep, range(sweep.trials))
    log(f"Queued {sweep.trials} {'grid points' if sweep.grid is not None else 'trials'} in study {study.study_name}")
    return study


def enqueue(study, sweep: Sweep, indices) -> None:
    points = sweep.points()
    for i in indices:
        study.enqueue_trial(points[i], user_attrs={"point": i})
    study.set_user_attr("queued", sweep.trials)  # the queue is whole: joiners may start


def wait_for_queue(study, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "queued" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise KilnError(f"study {study.study_name} has no complete queue: the process that created it stopped while "
                            f"queueing; run kiln sweep --resume DIR once to queue the rest")
        time.sleep(1.0)


def enqueue_missing(study, sweep: Sweep, log=print) -> None:
    """--resume: queue the points no trial holds (a creator that died while queueing; more --trials for a search)."""
    held = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)}
    missing = [i for i in range(sweep.trials) if i not in held]
    if missing or study.user_attrs.get("queued") != sweep.trials:
        enqueue(study, sweep, missing)
        if missing:
            log(f"Queued {len(missing)} more points")


def save_sweep(sweep_dir: Path, sweep: Sweep, storage_url: str | None) -> None:
    import yaml

    from kiln.engine.files import write_json, write_text

    write_text(sweep_dir / CONFIG_FILE, yaml.safe_dump(sweep.config, sort_keys=False))
    fields = {k: v for k, v in sweep.to_json().items() if k != "config"}
    write_json(sweep_dir / SWEEP_FILE, {"study": study_name(sweep), "storage": masked(storage_url), "sweep": fields})


def read_sweep(sweep_dir: Path) -> tuple[Sweep, str | None]:
    """The sweep saved in `sweep_dir` and its storage URL as saved (None: the journal file beside it)."""
    import json

    import yaml

    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise KilnError(f"'{sweep_dir}' is not a kiln sweep directory (no {SWEEP_FILE}); pass the --out of a kiln sweep")
    try:
        saved = json.loads(path.read_text())
        config = yaml.safe_load((Path(sweep_dir) / CONFIG_FILE).read_text())
        return Sweep(config=config, **saved["sweep"]), saved["storage"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise KilnError(f"'{path}' is damaged ({type(err).__name__}: {err}); start the sweep again in a new --out") from None


def open_sweep(sweep_dir: Path, storage_url: str | None = None):
    """(sweep, study) of a sweep directory. `storage_url` is needed only where the saved one hides a password."""
    sweep, saved_url = read_sweep(sweep_dir)
    url = storage_url or saved_url
    if url is not None and url != storage_url and "***" in url:
        raise KilnError(f"the sweep's storage {url} needs its password: pass --storage URL (or keep the password in "
                        f"~/.pgpass and leave it out of the URL)")
    return sweep, load_study(open_storage(url, Path(sweep_dir)), sweep)


def pop_waiting(study):
    """The next WAITING trial as a Trial this process runs, or None when the queue is empty. study.ask() would create
    a fresh trial when the queue is empty; the pop alone never does (Study._pop_waiting_trial_id: set_trial_state_values
    WAITING -> RUNNING, which exactly one process wins)."""
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna().Trial(study, trial_id)


def this_host() -> str:
    """This machine, told apart from a reinstalled or cloned one with the same name by its boot id."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{platform.node()}:{boot}" if boot else platform.node()


def process_alive(pid: int | None) -> bool:
    """A live process: not gone, and not a zombie (a killed worker whose parent died too stays one where PID 1 does not
    reap orphans, as in many containers)."""
    from kiln.engine.monitor import process_alive as exists

    if not exists(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): the pid alone
        return True


def fail_trial(study, number: int) -> bool:
    """Mark a RUNNING trial FAIL; False when it had already finished (another process got there first)."""
    op = optuna()
    try:
        study.tell(number, state=op.trial.TrialState.FAIL)
    except (ValueError, RuntimeError, op.exceptions.UpdateFinishedTrialError):
        return False
    return True


def enqueue_retry(study, frozen, reason: str, exception_retry: bool) -> int:
    """Queue a failed trial's parameters again; the new trial continues the same point and run directory. Returns its
    number."""
    attrs = frozen.user_attrs
    retries = attrs.get("retries", 0) + exception_retry
    study.enqueue_trial(frozen.params or frozen.system_attrs.get("fixed_params", {}),
                        user_attrs={"point": attrs.get("point"), "run_dir": attrs.get("run_dir"), "retries": retries,
                                    "retry_of": frozen.number, "retry_reason": reason})
    return max(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("retry_of") == frozen.number)


class Watchdog:
    """Finds RUNNING trials whose worker is gone and re-queues them. Every worker and launcher runs one; the FAIL
    that precedes a re-queue is atomic, so a dead trial is re-queued once however many watch it."""

    def __init__(self):
        self.host = this_host()
        self.seen: dict[int, tuple[Any, float]] = {}  # trial -> (its last beat, when this process first saw it)

    def dead(self, frozen, now: float | None = None) -> str | None:
        """Why `frozen`'s worker is taken for dead, or None while it may be alive."""
        worker = frozen.user_attrs.get("worker") or {}
        if worker.get("host") == self.host and not process_alive(worker.get("pid")):
            return f"its worker (pid {worker['pid']}) is gone"
        now = time.monotonic() if now is None else now
        beat = (frozen.user_attrs.get("beat"), worker.get("pid"))
        seen = self.seen.get(frozen.number)
        if seen is None or seen[0] != beat:
            self.seen[frozen.number] = (beat, now)
            return None
        if now - seen[1] > STALE_AFTER_S:
            where = f" (pid {worker.get('pid')} on {worker.get('host', '?').split(':')[0]})" if worker else ""
            return f"no heartbeat from its worker{where} for {STALE_AFTER_S} s"
        return None

    def requeue_dead(self, study) -> list[str]:
        """Fail and re-queue every dead RUNNING trial; one line per trial this process re-queued."""
        op = optuna()
        lines = []
        for frozen in study.get_trials(deepcopy=False, states=(op.trial.TrialState.RUNNING,)):
            reason = self.dead(frozen)
            if reason is not None and fail_trial(study, frozen.number):
                new = enqueue_retry(study, frozen, reason, exception_retry=False)
                lines.append(f"Trial {frozen.number}: {reason}; re-queued its parameters as trial {new}")
        return lines
