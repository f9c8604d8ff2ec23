import json
import subprocess
import sys

import pytest

from kiln.errors import KilnError
from kiln.sweep.launch import check_out, define
from kiln.sweep.study import STALE_AFTER_S, Watchdog, create_or_join, enqueue_missing, open_storage, open_sweep, pop_waiting, \
    save_sweep


@pytest.fixture
def grid_sweep(sweep_config):
    return define(str(sweep_config), [], grid=["model.dim=8,16,24", "model.depth=1,2,3"], space=None, trials=None,
                  objective=None, direction=None, sampler=None, pruner=None, retries=None, log=lambda line: None)


@pytest.fixture
def sweep_dir(tmp_path, grid_sweep):
    out = tmp_path / "sweep"
    out.mkdir()
    save_sweep(out, grid_sweep, None)
    create_or_join(open_storage(None, out), grid_sweep, log=lambda line: None)
    return out


POPPER = """
import json, sys, time
from kiln.sweep.study import open_sweep, pop_waiting
sweep, study = open_sweep(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # all three start popping together
popped = []
while (trial := pop_waiting(study)) is not None:
    popped.append(trial.number)
    time.sleep(0.01)
print(json.dumps(popped), flush=True)
"""


def test_three_processes_popping_one_journal_take_each_point_once(sweep_dir):
    poppers = [subprocess.Popen([sys.executable, "-c", POPPER, str(sweep_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in poppers:
        assert p.stdout.readline().strip() == "ready"
    for p in poppers:
        p.stdin.write("go\n")
        p.stdin.flush()
    popped = [json.loads(p.communicate(timeout=60)[0]) for p in poppers]
    numbers = sorted(n for each in popped for n in each)
    assert numbers == list(range(9))  # every queued trial once, none twice, and no trial beyond the queue
    _, study = open_sweep(sweep_dir)
    assert len(study.get_trials()) == 9


def test_the_queue_holds_every_point_once_and_a_second_start_joins_it(sweep_dir, grid_sweep):
    _, study = open_sweep(sweep_dir)
    queued = study.get_trials(deepcopy=False)
    assert [t.user_attrs["point"] for t in queued] == list(range(9))
    assert [t.system_attrs["fixed_params"] for t in queued] == grid_sweep.points()
    create_or_join(open_storage(None, sweep_dir), grid_sweep, log=lambda line: None)  # another process, same sweep
    enqueue_missing(study, grid_sweep, log=lambda line: None)  # --resume: nothing is missing
    assert len(study.get_trials(deepcopy=False)) == 9


def test_a_dead_workers_trial_is_requeued_once_with_its_parameters(sweep_dir):
    _, study = open_sweep(sweep_dir)
    trial = pop_waiting(study)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    watchdog, other = Watchdog(), Watchdog()
    trial.set_user_attr("worker", {"host": watchdog.host, "pid": int(dead.stdout)})
    trial.set_user_attr("run_dir", "trial_0000")
    lines = watchdog.requeue_dead(study) + other.requeue_dead(study)  # two watchers: one re-queue
    assert lines == [f"Trial 0: its worker (pid {int(dead.stdout)}) is gone; re-queued its parameters as trial 9"]
    retry = study.trials[9]
    assert retry.state.name == "WAITING" and study.trials[0].state.name == "FAIL"
    assert retry.system_attrs["fixed_params"] == {"model.dim": 8, "model.depth": 1}  # point 0's, as queued
    assert (retry.user_attrs["point"], retry.user_attrs["run_dir"], retry.user_attrs["retry_of"]) == (0, "trial_0000", 0)


def test_a_live_worker_on_this_machine_is_left_alone(sweep_dir):
    import os

    _, study = open_sweep(sweep_dir)
    trial = pop_waiting(study)
    watchdog = Watchdog()
    trial.set_user_attr("worker", {"host": watchdog.host, "pid": os.getpid()})
    for _ in range(3):
        assert watchdog.requeue_dead(study) == []


def test_another_machines_worker_is_dead_once_its_beat_stops_for_the_grace_period(sweep_dir):
    _, study = open_sweep(sweep_dir)
    trial = pop_waiting(study)
    trial.set_user_attr("worker", {"host": "elsewhere:12345678", "pid": 1})
    watchdog = Watchdog()
    frozen = lambda: study.trials[trial.number]  # noqa: E731
    assert watchdog.dead(frozen(), now=0.0) is None  # first seen
    assert watchdog.dead(frozen(), now=STALE_AFTER_S - 1) is None
    trial.set_user_attr("beat", 1)  # it beats: the clock starts again
    assert watchdog.dead(frozen(), now=STALE_AFTER_S + 1) is None
    assert watchdog.dead(frozen(), now=2 * STALE_AFTER_S) is None
    assert watchdog.dead(frozen(), now=2 * STALE_AFTER_S + 2) == \
        f"no heartbeat from its worker (pid 1 on elsewhere) for {STALE_AFTER_S} s"


def test_an_out_holding_another_sweep_is_one_line(sweep_dir, sweep_config):
    other = define(str(sweep_config), [], grid=["model.dim=8,32"], space=None, trials=None, objective=None,
                   direction=None, sampler=None, pruner=None, retries=None)
    with pytest.raises(KilnError) as err:
        check_out(sweep_dir, other)
    assert str(err.value) == (f"--out {sweep_dir} holds another sweep (grid model.dim=8,16,24 x model.depth=1,2,3 on "
                              f"{sweep_config}); pass another --out, or continue that one with kiln sweep --resume {sweep_dir}")
    (sweep_dir.parent / "junk").mkdir()
    (sweep_dir.parent / "junk" / "x").write_text("x")
    with pytest.raises(KilnError, match="is not empty and holds no kiln sweep"):
        check_out(sweep_dir.parent / "junk", other)


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(KilnError) as err:
        open_storage(f"sqlite:///{tmp_path}/missing/dir/x.db", tmp_path)
    assert str(err.value) == f"--storage sqlite:///{tmp_path}/missing/dir/x.db cannot be opened: (sqlite3.OperationalError) " \
                             f"unable to open database file"
    with pytest.raises(KilnError, match=r"^--storage postgresql://kiln:\*\*\*@127.0.0.1:9/db cannot be opened: "):
        open_storage("postgresql://kiln:secret@127.0.0.1:9/db", tmp_path)


def test_an_rdb_storage_holds_the_same_study(tmp_path, grid_sweep):
    url = f"sqlite:///{tmp_path}/study.db"
    study = create_or_join(open_storage(url, tmp_path), grid_sweep, log=lambda line: None)
    joined = create_or_join(open_storage(url, tmp_path), grid_sweep, log=lambda line: None)
    assert joined.study_name == study.study_name and len(joined.get_trials()) == 9
    assert pop_waiting(joined).number == 0 and pop_waiting(study).number == 1
