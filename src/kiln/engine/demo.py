"""`kiln demo`: every recipe's quick config trained end to end, then one table of what each reached against the
baseline measured in the same run (what `make demo` runs).

Each recipe trains in its own `kiln train` process (into runs/<recipe>/demo, replacing an earlier demo run), so a
recipe that fails, or crashes its process, does not stop the others; the table says which failed and why.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kiln.engine.files import write_text
from kiln.engine.runs import duration_cell, headline_of, number, read_json, run_config

RECIPE_ORDER = ("nav", "traffic", "world", "printer", "seqgen")


@dataclass
class DemoResult:
    recipe: str
    run_dir: Path
    wall_s: float
    error: str | None = None           # the failure's one line; None when the run finished
    trained: str = "-"                 # what was trained, from the run's files
    headline: dict[str, Any] | None = None


def run_demo(names: list[str], recipes: Mapping[str, Any], config_dir: Path, runs_dir: Path = Path("runs")) -> list[DemoResult]:
    """Train config_dir/<recipe>/quick.yaml of each recipe in turn; a Ctrl-C stops the demo after the current one."""
    results = []
    for name in names:
        run_dir = runs_dir / name / "demo"
        started = time.perf_counter()
        code, last_line = train_in_own_process(config_dir / name / "quick.yaml", run_dir)
        result = DemoResult(name, run_dir, time.perf_counter() - started)
        if code == 0:
            result.trained = what_was_trained(run_dir)
            result.headline = headline_of(recipes.get(name), read_json(run_dir / "test_results.json") or {})
        else:
            result.error = failure(code, last_line)
        results.append(result)
        if code == 130:
            break
    return results


def train_in_own_process(config: Path, run_dir: Path) -> tuple[int, str]:
    """`kiln train CONFIG --run-dir RUN --overwrite` as its own process; its output passes through to the console.
    Returns its exit code and the last line it wrote to stderr (the error, when it failed)."""
    command = [sys.executable, "-m", "kiln", "train", str(config), "--run-dir", str(run_dir), "--overwrite"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    last = ""
    try:
        for line in process.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
        return process.wait(), last
    except KeyboardInterrupt:  # the child got the Ctrl-C too: it saves its run and stops; wait for that
        process.wait()
        return 130, "interrupted (Ctrl-C)"


def failure(code: int, last_line: str) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == 130:
        return "interrupted (Ctrl-C)"
    return last_line.removeprefix("kiln: error: ") or f"exit code {code}"


def what_was_trained(run_dir: Path) -> str:
    """config name, model arch, weights (the floats in best_model.pt: parameters and saved buffers) and epochs, from
    the run's config.yaml, best_model.pt and history.json."""
    import torch

    config = run_config(run_dir)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    state = torch.load(run_dir / "best_model.pt", map_location="cpu", weights_only=True)["state_dict"]
    weights = sum(v.numel() for v in state.values() if v.is_floating_point())
    epochs = (read_json(run_dir / "history.json") or {}).get("epoch") or [0]
    phases = f", {len(config['phases'])} phases" if config.get("phases") else ""
    arch = f" {model['arch']}" if "arch" in model else ""
    return f"{config.get('name', run_dir.name)}:{arch} {weights:,} weights, {epochs[-1]:g} epochs{phases}"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def demo_table(results: list[DemoResult]) -> str:
    """The demo's one table, as markdown (runs/demo.md; the console renders the same text)."""
    lines = ["| recipe | result | trained | headline metric | model | baseline (same run) | wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        h = r.headline
        metric = f"{h['metric']} ({'higher' if h['higher_is_better'] else 'lower'} is better)" if h else "-"
        model = number(h["value"]) if h else "-"
        baseline = f"{h['baseline']}: {number(h['baseline_value'])}" if h else "-"
        result = "finished" if r.error is None else f"FAILED: {r.error}"
        lines.append(f"| {r.recipe} | {cell(result)} | {cell(r.trained)} | {cell(metric)} | {model} | {cell(baseline)} | "
                     f"{duration_cell(r.wall_s)} |")
    return "\n".join(lines) + "\n"


def write_demo_report(results: list[DemoResult], out: Path) -> str:
    """runs/demo.md: the table, plus where each run is; returns the table."""
    table = demo_table(results)
    runs = "\n".join(f"- {r.recipe}: `{r.run_dir}`" for r in results if r.run_dir.is_dir())  # a failed start leaves none
    write_text(out, f"# kiln demo\n\n{table}\nRuns:\n\n{runs}\n\nEvery run, machine-readable: `kiln runs --json`.\n")
    return table

