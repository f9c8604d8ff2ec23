"""Crash and resume: a deterministic run SIGKILLed at random moments, resumed each time, against one never killed.

A run of `--recipe` (nav: in-memory batches; nav-loader: the same through a DataLoader with worker processes;
world: memory-mapped frame shards through a DataLoader) trains uninterrupted once. Then the same config trains
in another directory and is killed with SIGKILL `--kills` times, each at a random moment, and resumed with
`kiln train --resume` after each kill. The moments are drawn so that every kind occurs: before the first
checkpoint (the child kills itself as its first save begins), mid-epoch, during a validation, and during a
checkpoint write (the child's torch.save writes part of the file, then the process kills itself). The final weights and the lr of every validation row must equal
the uninterrupted run's bit for bit.

    python bench/crash_resume.py [--recipe nav|nav-loader|world] [--kills 10] [--seed 0]

Last line: JSON with `kills`, `kinds` (how many kills of each kind landed), `identical`, `lr_identical`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# The child: kiln train, with two probes a bench needs and kiln does not: a file that says "validating" while
# the loop validates, and a torch.save that may kill the process halfway through a checkpoint (kill_on_save=n: the
# n-th save writes part of its file, then the process dies) or just before one (kill_on_save=-n).
CHILD = r"""
import os, signal, sys, torch
from pathlib import Path
import kiln.engine.loop as loop
flag, kill_on_save = Path(sys.argv[1]), int(sys.argv[2])
validate = loop.Run.validate
def probed_validate(self):
    flag.write_text("validating")
    try:
        return validate(self)
    finally:
        flag.write_text("training")
loop.Run.validate = probed_validate
real_save, saves = torch.save, [0]
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("kind") == "training-state":
        saves[0] += 1
        if saves[0] == -kill_on_save:  # the moment before the first byte of this checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        if saves[0] == kill_on_save:
            f.write(b"\x00" * 4096)
            f.flush()
            flag.write_text("writing a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from kiln.cli import main
sys.exit(main(sys.argv[3:]))
"""

RECIPES = {
    "nav": ("configs/nav/quick.yaml", ["data.generate.num_train=600", "data.generate.num_val=100", "data.generate.num_test=100",
                                        "model.dim=32", "train.batch_size=32", "train.max_epochs=4", "train.val_every_n_steps=8"]),
    "nav-loader": ("configs/nav/quick.yaml", ["data.generate.num_train=600", "data.generate.num_val=100",
                                               "data.generate.num_test=100", "model.dim=32", "train.batch_size=32",
                                               "train.max_epochs=4", "train.val_every_n_steps=8", "train.num_workers=2"]),
    "world": ("configs/world/quick.yaml", ["data.generate.episodes=4", "data.generate.val_episodes=1",
                                           "data.generate.test_episodes=1", "data.generate.steps=60", "train.max_steps=60",
                                           "train.val_every_n_steps=15"]),
}


def train(args: list[str], flag: Path, kill_on_save: int = 0, timeout: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(flag), str(kill_on_save), "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a training exited with {process.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")


def wait_for(condition, process: subprocess.Popen, timeout: float) -> bool:
    """Poll until `condition()` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if condition():
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    return False


def wait_until_training(run_dir: Path, process: subprocess.Popen) -> bool:
    """Until this process's status.json says running (its imports, data and checks done)."""
    def running() -> bool:
        status = json.loads((run_dir / "status.json").read_text())
        return status["pid"] == process.pid and status["state"] == "running"
    return wait_for(running, process, timeout=120)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "final_model.pt", weights_only=True)["state_dict"]


def lrs(run_dir: Path) -> list:
    history = json.loads((run_dir / "history.json").read_text())
    return list(zip(history["step"], history["lr"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="nav")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    config, overrides = RECIPES[args.recipe]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # precision 32, not auto: the reference and the killed run are two runs, and auto's timing at each one's first
        # start may choose differently on a CPU with bf16 (a resumed run keeps its own: tests/engine/test_loop.py)
        common = [str(ROOT / config), *overrides, f"data.dir={work / 'data'}", "train.deterministic=true", "train.threads=1",
                  "train.loggers=[]", "train.patience=null", "train.precision=32"]
        flag = work / "where"
        started = time.perf_counter()
        finish(train([*common, "--run-dir", str(work / "reference")], flag))
        duration = time.perf_counter() - started  # includes making the data once
        print(f"uninterrupted run: {duration:.1f}s, {len(lrs(work / 'reference'))} validations")

        run_dir, kinds, kills = work / "killed", {}, 0
        plan = ["before the first checkpoint", "during a checkpoint write", "during a validation", "mid-epoch"]
        while kills < args.kills:
            if (run_dir / "test_results.json").is_file():  # a kill landed after the evaluation wrote its results
                break
            command = ["--resume", str(run_dir)] if (run_dir / "run.json").is_file() else [*common, "--run-dir", str(run_dir)]
            intent = plan[kills] if kills < len(plan) else rng.choice(plan[1:])
            flag.write_text("starting")
            fresh = not (run_dir / "checkpoints" / "last.ckpt").is_file()
            if intent == "before the first checkpoint" and not fresh:
                intent = "mid-epoch"
            # Before the first checkpoint: the process kills itself as the first save begins. A timed kill would land
            # after that save on a machine fast enough to reach the first validation within the sleep.
            kill_on_save = {"during a checkpoint write": rng.randint(1, 6), "before the first checkpoint": -1}.get(intent, 0)
            process = train(command, flag, kill_on_save=kill_on_save)
            if kill_on_save == 0 and wait_until_training(run_dir, process):
                if intent == "during a validation":
                    wait_for(lambda: flag.read_text() == "validating", process, timeout=60)
                else:
                    time.sleep(rng.uniform(0.2, duration / 4))
                process.send_signal(signal.SIGKILL)
            _, err = process.communicate()
            if process.returncode == 0:  # it finished before the kill came
                if (run_dir / "test_results.json").is_file():
                    break
                continue
            if process.returncode != -signal.SIGKILL:
                raise SystemExit(f"the killed run exited with {process.returncode}, not by SIGKILL: {err.strip()[-500:]}")
            kills += 1
            where = flag.read_text()
            kind = ("before the first checkpoint" if not (run_dir / "checkpoints" / "last.ckpt").is_file()
                    else {"validating": "during a validation", "writing a checkpoint": "during a checkpoint write"}.get(where, "mid-epoch"))
            kinds[kind] = kinds.get(kind, 0) + 1
            print(f"kill {kills}: {kind}")
        if not (run_dir / "test_results.json").is_file():
            finish(train(["--resume", str(run_dir)], flag))
        reference, resumed = weights(work / "reference"), weights(run_dir)
        identical = reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)
        lr_identical = lrs(work / "reference") == lrs(run_dir)
        print(f"{kills} kills ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); final weights identical: {identical}; "
              f"lr of every validation identical: {lr_identical}")
        print(json.dumps({"recipe": args.recipe, "kills": kills, "kinds": kinds, "identical": identical, "lr_identical": lr_identical}))


if __name__ == "__main__":
    main()
