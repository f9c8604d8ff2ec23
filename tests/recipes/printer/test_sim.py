"""Sampling a planned file: the samples one file may give are counted from the plan and bounded before any is made."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

from kiln.cli import main
from kiln.errors import KilnError
from kiln.recipes.printer.config import PrinterGenerator
from kiln.recipes.printer.gcode import read_gcode, read_gcode_file
from kiln.recipes.printer.sim import MAX_SAMPLES_PER_FILE, Printer, layer_times, position_error, simulate_moves

SLOW = "M83\nG1 Z0.2\nG1 X10 Y0 E1 F1200\nG1 X1000 Y0 E1 F1\nG1 X0 Y0 E1 F1200\n"  # line 4: 990 mm at 1 mm/min, 16.5 hours


def peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_file_that_would_give_too_many_samples_is_refused_before_sampling(tmp_path):
    path = tmp_path / "slow.gcode"
    path.write_text(SLOW)
    moves = read_gcode_file(path)
    pattern = (rf"^'{re.escape(str(path))}': layers 'all' would be 59,4\d\d,\d\d\d samples at 1000 Hz \(16.5 hours of "
               rf"printing\), more than the {MAX_SAMPLES_PER_FILE:,} one file may give; its slowest move is line 4 "
               rf"\(59,400 s\): choose fewer layers \(--layers sampled:N\), a lower --sample-rate, or fix the line$")

    def simulate():
        with pytest.raises(KilnError, match=pattern):
            simulate_moves(Printer(PrinterGenerator()), moves, "slow", "all")

    assert peak_bytes(simulate) < 20 * 2 ** 20  # 59 million samples would be 5 GB per channel set


def test_settings_that_make_every_move_crawl_are_refused_the_same_way():
    moves = read_gcode("M83\nG1 Z0.2\nG1 X10 Y0 E1 F1200\nG1 X10 Y10 E1\n", source="square")
    with pytest.raises(KilnError, match=r"^square: layers 'all' would be .* its slowest move is line \d"):
        simulate_moves(Printer(PrinterGenerator(acceleration=1e-6)), moves, "square", "all")


def test_layer_times_span_the_settling_time_before_the_layer_to_its_last_move():
    printer = Printer(PrinterGenerator())
    moves = read_gcode("M83\nG1 Z0.2\nG1 X10 Y0 E1 F1200\nG1 Z0.4\nG1 X0 Y0 E1\n")
    plan = printer.plan(moves)
    spans = layer_times(printer, plan, "all", len(moves.layer_z), "two")
    assert [layer for layer, _ in spans] == [0, 1]
    for layer, times in spans:
        first = np.flatnonzero(plan.layer == layer)[0]
        last = np.flatnonzero(plan.layer == layer)[-1]
        assert times[0] <= plan.t_start[first] - 0.5 < times[1]  # SETTLE_S + WARMUP_S before the first move
        assert times[-2] < plan.t_start[last] + plan.move_time[last] <= times[-1]
        np.testing.assert_allclose(np.diff(times), 1e-3)


def test_kiln_data_printer_refuses_a_slow_file_in_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "slow.gcode"
    path.write_text(SLOW)
    assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", str(path), "--layers", "all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: '{path}': layers 'all' would be") and "line 4" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def resting_layer(printer: Printer, n: int) -> tuple:
    """A plan that leaves the carriage at rest at (10, 10), and `n` sample times after it."""
    plan = printer.plan(read_gcode("M83\nG1 Z0.2\nG1 X10 Y10 E1 F1200\n"))
    return plan, plan.duration + np.arange(n) / printer.rate


def test_an_offset_moves_the_carriage_friction_with_its_velocity():
    # a ramp of 50 mm/s added to a carriage at rest: at constant speed the belt stretches by friction / w^2, as for a
    # planned move (tests/recipes/printer/test_dynamics.py), so the offset's velocity reaches the friction
    n = 2000
    ramp = np.zeros((n, 2))
    ramp[:, 0] = 50.0 * np.arange(n) / 1000.0
    finals = []
    for friction in (0.0, 1500.0):
        printer = Printer(PrinterGenerator(friction=friction))
        plan, times = resting_layer(printer, n)
        finals.append(printer.simulate(plan, times, offset=ramp)["x_act"][-1])
    w = 2 * np.pi * PrinterGenerator().resonance_x_hz
    assert np.isclose(finals[1] - finals[0], -1500.0 * np.tanh(50.0 / 2.0) / w ** 2, rtol=1e-4)


def test_the_response_of_an_offset_is_the_simulated_impulse_response():
    printer = Printer(PrinterGenerator(friction=0.0))
    n, at = 2000, 500
    plan, times = resting_layer(printer, n)
    offset = np.zeros((n, 2))
    offset[at] = 1e-3
    plain, moved = printer.simulate(plan, times), printer.simulate(plan, times, offset=offset)
    frequency = np.fft.rfftfreq(n, 1 / printer.rate)
    for axis, key in enumerate(("x_act", "y_act")):
        impulse = (moved[key] - plain[key]) / 1e-3
        simulated = np.fft.rfft(impulse) * np.exp(2j * np.pi * frequency * at / printer.rate)  # undo the delay
        response = printer.response(axis, n)
        # up to 100 Hz (past both resonances); the simulation shifts the shaper's pulses by linear interpolation
        np.testing.assert_allclose(simulated[frequency <= 100], response[frequency <= 100], atol=0.02)
        assert abs(response[0] - 1) < 1e-9                          # an offset held still moves the carriage by itself


SQUARE = "M83\nG1 Z0.2\nG1 X10 Y10 F6000\nG1 X40 Y10 E1 F3000\nG1 X40 Y30 E1\nG1 X10 Y30 E1\nG1 X10 Y10 E1\n"


def rms(error: np.ndarray) -> float:
    return float(np.sqrt((error ** 2).sum(1).mean()))


def test_without_friction_the_correction_cancels_what_adding_the_error_leaves():
    printer = Printer(PrinterGenerator(friction=0.0))                # linear: exact but for the regularisation
    plan = printer.plan(read_gcode(SQUARE))
    times = np.arange(-0.3, plan.duration + 0.3, 1 / printer.rate)
    error = position_error(printer.simulate(plan, times))
    added = rms(position_error(printer.simulate(plan, times, offset=-error)))
    inverted = rms(position_error(printer.simulate(plan, times, offset=printer.correction(error))))
    assert inverted < 0.1 * rms(error) and inverted < 0.5 * added
