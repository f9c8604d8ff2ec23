"""What sets the error left after compensation, per G-code file: the model's prediction error, the way the
correction itself goes through the shaper and the belt axes, or the friction its own motion moves.

For every selected layer of each file, with a trained printer run's simulated printer and LSTM, the RMS error
(actual - planned, from the layer's first move on) after each correction:

- `true, added`: the simulated error itself subtracted from the path (a perfect model of the planned path);
- `true, inverted`: the simulated error turned into the offset that would cancel it after the shaper and the
  belt axes if the printer were linear (`Printer.correction`: Tikhonov inverse of their
  frequency response);
- `true, 3 passes`: the inverted correction applied 3 times at 0.7 of its size, each pass on the error the
  corrected path really has (a perfect model of the corrected path too);
- `lstm, added` and `lstm, inverted`: the same with the LSTM's streamed prediction (`kiln printer compensate`
  uses `lstm, inverted`);
- `true, inverted, no friction` and `true, inverted, no shaper`: the second column on the same printer without
  Coulomb friction or without the input shaper (each with its own error before).

The RMS cuts are ratios within one run; the last line is JSON.

    python bench/printer_floor.py runs/printer/hybrid FILE.gcode [FILE.gcode ...] [--layers sampled:20]
    python bench/printer_floor.py runs/printer/hybrid    # pyGCodeDecode's example files (PrusaSlicer, Anisoprint Aura)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from kiln.recipes.printer.compensate import load_run, predict_error  # noqa: E402
from kiln.recipes.printer.gcode import read_gcode_file  # noqa: E402
from kiln.recipes.printer.sim import SETTLE_S, WARMUP_S, Printer, layer_times, position_error  # noqa: E402

COLUMNS = ("true, added", "true, inverted", "true, 3 passes", "lstm, added", "lstm, inverted",
           "true, inverted, no friction", "true, inverted, no shaper")


def example_files() -> list[Path]:
    import pyGCodeDecode

    return sorted((Path(pyGCodeDecode.__file__).parent / "examples" / "data").glob("*.gcode"))


def rms(errors: list[np.ndarray]) -> float:
    return float(np.sqrt((np.concatenate(errors) ** 2).sum(1).mean()))


def passes(printer, plan, times: np.ndarray, error: np.ndarray, count: int = 3, step: float = 0.7) -> np.ndarray:
    """Offset after `count` inverted corrections, each of `step` times the error left by the offset before it."""
    offset = np.zeros_like(error)
    for _ in range(count):
        offset = offset + step * printer.correction(error)
        error = position_error(printer.simulate(plan, times, offset=offset))
    return offset


def residuals(task, settings, gcode: Path, layers: str) -> dict[str, float]:
    """RMS before and after each correction (mm), over the file's selected layers."""
    printers = {"": Printer(settings), "no friction": Printer(settings.model_copy(update={"friction": 0.0})),
                "no shaper": Printer(settings.model_copy(update={"shaper": "none"}))}
    moves = read_gcode_file(gcode)
    plan = printers[""].plan(moves)
    settle = int(round((SETTLE_S + WARMUP_S) * printers[""].rate))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("before", "prediction", "before, no friction",
                                                          "before, no shaper", *COLUMNS)}
    for _, times in layer_times(printers[""], plan, layers, len(moves.layer_z), moves.source):
        if len(times) <= settle + 1:
            continue
        for name, printer in printers.items():
            plain = printer.simulate(plan, times)
            error = position_error(plain)
            after = {"true, inverted": printer.correction(error)}
            if not name:
                predicted = predict_error(task, printer, plain)
                out["prediction"].append((predicted - error)[settle:])
                after.update({"true, added": -error, "true, 3 passes": passes(printer, plan, times, error),
                              "lstm, added": -predicted, "lstm, inverted": printer.correction(predicted)})
            out["before" + (f", {name}" if name else "")].append(error[settle:])
            for key, offset in after.items():
                corrected = position_error(printer.simulate(plan, times, offset=offset))[settle:]
                out[key + (f", {name}" if name else "")].append(corrected)
    if not out["before"]:
        raise SystemExit(f"{gcode}: no layer simulated with --layers {layers}")
    return {key: rms(value) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained printer run (model.arch: lstm)")
    parser.add_argument("gcode", type=Path, nargs="*", help="G-code files (default: pyGCodeDecode's examples)")
    parser.add_argument("--layers", default="sampled:20", help="layers per file (default sampled:20)")
    args = parser.parse_args()
    task, settings = load_run(args.run)
    rows = {}
    print(f"{'file':<24} {'before um':>9} {'pred. err':>9} " + " ".join(f"{c:>27}" for c in COLUMNS))
    for gcode in args.gcode or example_files():
        r = residuals(task, settings, gcode, args.layers)
        cut = {c: 1 - r[c] / r["before" + c[len("true, inverted"):]] if "no " in c else 1 - r[c] / r["before"] for c in COLUMNS}
        rows[gcode.name] = {"before_um": round(r["before"] * 1e3, 2), "prediction_error_um": round(r["prediction"] * 1e3, 2),
                            **{f"{c} um": round(r[c] * 1e3, 2) for c in COLUMNS}, **{f"{c} cut": round(cut[c], 4) for c in COLUMNS}}
        print(f"{gcode.name:<24} {r['before'] * 1e3:>9.1f} {r['prediction'] * 1e3:>9.1f} "
              + " ".join(f"{r[c] * 1e3:>9.1f} um {cut[c]:>8.1%}      " for c in COLUMNS), flush=True)
    worst = min(row["lstm, inverted cut"] for row in rows.values())
    print(json.dumps({"run": str(args.run), "layers": args.layers, "worst_lstm_inverted_cut": round(worst, 4), "files": rows}))


if __name__ == "__main__":
    main()
