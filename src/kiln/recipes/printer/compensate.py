"""`kiln printer compensate RUN GCODE`: print a G-code file with the learned error taken out of the command.

For every simulated layer: plan the file with the run's printer, predict the error of the planned path with the
trained LSTM (streamed over the layer), turn it into the offset that cancels it once it has gone through the
shaper and the belt axes (`Printer.correction`), ask the firmware to follow reference + offset instead (the same
planner, shaper and axes; the offset's velocity moves the carriage's friction too), simulate again, and compare the
error against the planned path before and after. The last output line is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.recipes import dataset_info


def error_stats(error: np.ndarray) -> dict[str, float]:
    size = np.linalg.norm(error, axis=1)
    return {"rms": float(np.sqrt((size ** 2).mean())), "max": float(size.max())}


def plot(result: dict, layer, out: Path) -> None:
    from kiln.engine.report import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].plot(layer["x_ref"], layer["y_ref"], color="black", lw=0.6, label="planned path")
    scale = 0.5 / max(np.abs(layer["before"]).max(), 1e-9)   # exaggerate the deviations to make them visible
    for key, colour in (("before", "tab:red"), ("after", "tab:green")):
        e = layer[key]
        axes[0].plot(layer["x_ref"] + scale * e[:, 0], layer["y_ref"] + scale * e[:, 1], lw=0.6, color=colour, label=f"{key} (x{scale:.0f})")
    axes[0].set_aspect("equal")
    axes[0].legend(fontsize=7)
    t = np.arange(len(layer["before"])) / layer["rate"]
    for key, colour in (("before", "tab:red"), ("after", "tab:green")):
        axes[1].plot(t, np.linalg.norm(layer[key], axis=1) * 1000, lw=0.7, color=colour, label=key)
    axes[1].set_xlabel("time in layer (s)")
    axes[1].set_ylabel("|actual - planned| (um)")
    axes[1].set_title(f"RMS {result['rms_before_mm'] * 1000:.1f} -> {result['rms_after_mm'] * 1000:.1f} um over "
                      f"{result['layers']} layer(s)")
    axes[1].legend(fontsize=8)
    save_figure(fig, out)


def load_run(run_dir: Path):
    """A trained run's LSTM task and the settings of the simulated printer its dataset was made with."""
    from pydantic import ValidationError

    from kiln.config import validate
    from kiln.engine.checkpoint import load_checkpoint
    from kiln.engine.evaluate import saved_task
    from kiln.recipes import get_recipe
    from kiln.recipes.printer.config import PrinterConfig, PrinterGenerator
    from kiln.recipes.printer.model import RealTimeCorrector

    path = Path(run_dir) / "best_model.pt"
    if not path.is_file():
        raise KilnError(f"'{run_dir}' has no best_model.pt; train it first (kiln train CONFIG --run-dir {run_dir})")
    weights = load_checkpoint(path, "printer")  # weights_only: a crafted pickle is refused in one line, nothing in it runs
    cfg = validate(weights.get("config"), PrinterConfig, str(path))
    task = saved_task(get_recipe("printer"), cfg, weights, weights.get("data_info") or {}, path).eval()
    if not isinstance(task.model, RealTimeCorrector):
        raise KilnError(f"'{run_dir}' trained the ridge baseline alone; compensation uses the LSTM (model.arch: lstm)")
    dataset = dataset_info(Path(cfg.data.dir))
    if not dataset:
        raise KilnError(f"the run's dataset '{cfg.data.dir}' (with the simulated printer's settings) is gone; regenerate it")
    where = Path(cfg.data.dir) / "dataset.json"
    missing = [k for k in PrinterGenerator.model_fields if k not in dataset]
    if missing:
        raise KilnError(f"'{where}' lacks the printer setting {missing[0]}; regenerate the dataset with kiln data printer")
    try:
        return task, PrinterGenerator(**{k: dataset[k] for k in PrinterGenerator.model_fields})
    except ValidationError as err:
        first = err.errors()[0]
        raise KilnError(f"'{where}': {first['loc'][0]}: {first['msg']} (got {first['input']!r}); regenerate the dataset "
                        "with kiln data printer") from None


def predict_error(task, printer, plain: dict) -> np.ndarray:
    """[N, 2] error (mm) the LSTM predicts for a simulated layer, streamed from its first sample."""
    from kiln.recipes.printer.data import stream_features
    from kiln.recipes.printer.evaluation import predict_stream

    names = task.feature_names
    lags = [float(n[6:-2]) for n in names if n.startswith("vx_lag")]
    features = stream_features(plain, printer.rate, "x_ref" in names, "ax_ref" in names, lags)
    with torch.no_grad():
        return predict_stream(task, torch.from_numpy(features))


def compensate_layer(task, printer, plan, times: np.ndarray, settle: int) -> dict:
    """One layer printed as planned, then with the error the LSTM predicts (streamed, its state warming up first)
    cancelled through the printer's motion: the reference and both errors (mm) from the layer's first move on."""
    from kiln.recipes.printer.sim import position_error

    plain = printer.simulate(plan, times)
    corrected = printer.simulate(plan, times, offset=printer.correction(predict_error(task, printer, plain)))
    return {"x_ref": plain["x_ref"][settle:], "y_ref": plain["y_ref"][settle:], "before": position_error(plain)[settle:],
            "after": position_error(corrected)[settle:], "rate": printer.rate}


def compensate_moves(task, settings, moves, layers: str) -> tuple[dict, list[dict]]:
    """The result (JSON) of compensating every selected layer of `moves`, and the layers (for the plot)."""
    from kiln.recipes.printer.sim import SETTLE_S, WARMUP_S, Printer, layer_times

    printer = Printer(settings)
    plan = printer.plan(moves)
    settle = int(round((SETTLE_S + WARMUP_S) * printer.rate))  # scored from the layer's first move on
    printed = [compensate_layer(task, printer, plan, times, settle)
               for _, times in layer_times(printer, plan, layers, len(moves.layer_z), moves.source) if len(times) > settle + 1]
    if not printed:
        raise KilnError(f"no layer of {moves.source} was simulated with layers '{layers}'; pass --layers all")
    b, a = (error_stats(np.concatenate([p[key] for p in printed])) for key in ("before", "after"))
    result = {"layers": len(printed), "samples": int(sum(len(p["before"]) for p in printed)), "rms_reduction": 1 - a["rms"] / b["rms"],
              "rms_before_mm": b["rms"], "rms_after_mm": a["rms"], "max_before_mm": b["max"], "max_after_mm": a["max"]}
    return result, printed


def compensate(run_dir: Path, gcode: Path, layers: str | None = None, out: Path | None = None, log=print) -> dict:
    from kiln.engine.files import make_dirs, refuse_file_in_path, write_json
    from kiln.recipes.printer.gcode import read_gcode_file

    out = Path(out) if out else Path(run_dir) / "compensation" / Path(gcode).stem
    refuse_file_in_path(out, "--out")  # before the simulation, not after it
    moves = read_gcode_file(gcode)
    task, settings = load_run(run_dir)
    for line, reason in moves.errors[:5]:
        log(f"Warning: {gcode} line {line}: {reason} (skipped)")
    result, printed = compensate_moves(task, settings, moves, layers or settings.layers)
    result = {"gcode": str(gcode), **result}
    make_dirs(out, "--out")
    plot(result, max(printed, key=lambda p: len(p["before"])), out / "compensation.png")  # the longest layer
    write_json(out / "compensation.json", result)  # temporary sibling, then renamed
    b, a, change = result["rms_before_mm"] * 1000, result["rms_after_mm"] * 1000, result["rms_reduction"]
    log(f"{gcode}: {result['layers']} layers, {result['samples']:,} samples; RMS error {b:.1f} -> {a:.1f} um "
        f"({abs(change):.0%} {'less' if change >= 0 else 'more'}), max {result['max_before_mm'] * 1000:.1f} -> "
        f"{result['max_after_mm'] * 1000:.1f} um; plot {out / 'compensation.png'}")
    return result


def run(args) -> int:
    result = compensate(args.run_dir, args.gcode, args.layers, args.out)
    print(json.dumps(result))
    return 0
