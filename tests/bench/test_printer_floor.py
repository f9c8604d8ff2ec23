"""bench/printer_floor.py's `true, 3 passes` column: each pass corrects what the pass before left, so on a printer
without friction three passes leave less than one. With friction they need not: on this zigzag they leave 8.3 um
where one pass leaves 6.4, as on cubhelix in docs/printer.md (the bench's runs on real files are its own)."""

import numpy as np

from kiln.recipes.printer.config import PrinterGenerator
from kiln.recipes.printer.gcode import read_gcode
from kiln.recipes.printer.sim import Printer, position_error

BENCH = "printer_floor"  # the bench fixture (conftest.py) imports bench/printer_floor.py
ZIGZAG = "M83\nG1 Z0.2\nG1 X10 Y10 F6000\n" + "".join(f"G1 X{40 if k % 2 else 10} Y{10 + k} E1 F4800\n" for k in range(12))


def rms(error: np.ndarray) -> float:
    return float(np.sqrt((error ** 2).sum(1).mean()))


def test_without_friction_three_passes_leave_less_than_one(bench):
    printer = Printer(PrinterGenerator(friction=0.0))
    plan = printer.plan(read_gcode(ZIGZAG))
    times = np.arange(-0.3, plan.duration + 0.3, 1 / printer.rate)
    error = position_error(printer.simulate(plan, times))
    one = rms(position_error(printer.simulate(plan, times, offset=printer.correction(error))))
    three = rms(position_error(printer.simulate(plan, times, offset=bench.passes(printer, plan, times, error))))
    assert three < one < rms(error)
