"""The motion planner: limits never exceeded, corner speeds by the formulas, the same timing as pyGCodeDecode,
input shapers that cancel the vibration they are designed for."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyGCodeDecode
import pytest

from kiln.recipes.printer.gcode import read_gcode, read_gcode_file
from kiln.recipes.printer.procedural_prints import procedural_gcode
from kiln.recipes.printer.planner import plan_moves, sample_plan, shaper_pulses

EXAMPLES = Path(pyGCodeDecode.__file__).parent / "examples" / "data"


@pytest.mark.parametrize("source", ["bee", "bearing5", "3dbenchy"])
@pytest.mark.parametrize("firmware", ["marlin", "klipper"])
def test_speed_and_acceleration_limits_hold_everywhere(source, firmware):
    moves = read_gcode_file(EXAMPLES / f"{source}.gcode") if source == "bee" else read_gcode(procedural_gcode(source, 3))
    a, v_max = 2500.0, 120.0
    plan = plan_moves(moves, a, v_max, firmware, junction_deviation=0.02, square_corner_velocity=6.0)
    keep = (np.linalg.norm(moves.end - moves.start, axis=1) > 0) | (moves.extrude != 0)
    nominal = np.minimum(moves.feedrate[keep], v_max)
    eps = 1e-6
    assert (plan.v_peak <= nominal + eps).all() and (plan.v_entry <= plan.v_peak + eps).all() and (plan.v_exit <= plan.v_peak + eps).all()
    np.testing.assert_allclose(plan.v_exit[:-1], plan.v_entry[1:])            # one speed at each junction
    assert plan.v_entry[0] == 0 and plan.v_exit[-1] == 0                     # from rest, to rest
    assert (plan.v_exit ** 2 <= plan.v_entry ** 2 + 2 * a * plan.length + 1e-6).all()   # reachable within each move
    assert (plan.v_entry ** 2 <= plan.v_exit ** 2 + 2 * a * plan.length + 1e-6).all()
    # the samples: position continuous, speed within the move's nominal speed, acceleration within the limit
    times = np.arange(0, plan.duration, 1e-4)
    s = sample_plan(plan, times)
    speed = np.linalg.norm(s["velocity"], axis=1)
    assert (speed <= nominal[s["move"]] + eps).all()
    assert (np.linalg.norm(s["acceleration"], axis=1) <= a + eps).all()
    numeric = np.diff(s["position"], axis=0) / 1e-4
    mid = 0.5 * (s["velocity"][1:] + s["velocity"][:-1])
    within = s["move"][1:] == s["move"][:-1]  # a corner turns the velocity at once (that is what a junction speed means)
    assert np.abs(numeric - mid)[within].max() < a * 1e-4  # velocity is the derivative of position
    printed = np.linalg.norm(moves.end - moves.start, axis=1) > 0
    end_times = (plan.t_start + plan.move_time)[np.linalg.norm(plan.direction, axis=1) > 0]
    np.testing.assert_allclose(sample_plan(plan, end_times)["position"], moves.end[printed], atol=1e-6)


@pytest.mark.parametrize("angle_deg", [30.0, 90.0, 135.0])
def test_corner_speed_follows_junction_deviation_and_square_corner_velocity(angle_deg):
    turn = math.radians(angle_deg)  # change of direction at the corner
    corner = f"G1 X100 Y0 F12000\nG1 X{100 + 100 * math.cos(turn):.9f} Y{100 * math.sin(turn):.9f}\n"
    moves = read_gcode(corner)
    a, jd, scv = 3000.0, 0.013, 5.0
    sin_half = math.sin((math.pi - turn) / 2)  # theta: the angle between the two moves' directions
    marlin = plan_moves(moves, a, 200.0, "marlin", junction_deviation=jd)
    assert math.isclose(marlin.v_exit[0], math.sqrt(a * jd * sin_half / (1 - sin_half)), rel_tol=1e-9)
    klipper = plan_moves(moves, a, 200.0, "klipper", square_corner_velocity=scv)
    expected = math.sqrt(scv ** 2 * (math.sqrt(2) - 1) * sin_half / (1 - sin_half))
    assert math.isclose(klipper.v_exit[0], expected, rel_tol=1e-9)
    if angle_deg == 90.0:  # Klipper's definition: a square corner is taken at square_corner_velocity
        assert math.isclose(klipper.v_exit[0], scv, rel_tol=1e-9)


def test_straight_lines_are_not_slowed_and_reversals_stop():
    straight = plan_moves(read_gcode("G1 X50 F6000\nG1 X100\n"), 1000.0, 200.0)
    reversal = plan_moves(read_gcode("G1 X50 F6000\nG1 X0\n"), 1000.0, 200.0)
    assert math.isclose(straight.v_exit[0], 100.0) and reversal.v_exit[0] == 0.0
    # the straight pair takes exactly one trapezoid: accelerate to 100 mm/s over 5 mm, cruise, decelerate
    assert math.isclose(straight.duration, 2 * 0.1 + (100 - 10) / 100, rel_tol=1e-9)


@pytest.mark.parametrize("name", ["triangle", "bee"])
def test_move_times_agree_with_pygcodedecode(name):
    """pyGCodeDecode (KIT's validated simulator) with its junction-deviation firmware: JD = 0.414 jerk^2 / a."""
    from pyGCodeDecode import gcode_interpreter

    acceleration, jerk = 1250.0, 8.0
    setup = gcode_interpreter.setup(presets_file=EXAMPLES / "printer_presets.yaml", printer="prusa_mini",
                                    firmware="junction_deviation", verbosity_level=0)
    setup.set_property({"p_acc": acceleration, "jerk": jerk, "vX": 1e4, "vY": 1e4, "vZ": 1e4, "vE": 1e4})
    sim = gcode_interpreter.simulation(gcode_path=EXAMPLES / f"{name}.gcode", initial_machine_setup=setup, verbosity_level=0)
    theirs: dict[int, float] = {}
    for block in sim.blocklist:
        if block.get_segments():
            line = block.state_B.line_number
            theirs[line] = theirs.get(line, 0.0) + block.get_segments()[-1].t_end - block.get_segments()[0].t_begin
    plan = plan_moves(read_gcode_file(EXAMPLES / f"{name}.gcode"), acceleration, 1e4, "marlin", 0.414 * jerk ** 2 / acceleration)
    ours: dict[int, float] = {}
    for line, duration in zip(plan.line.tolist(), plan.move_time):
        ours[line] = ours.get(line, 0.0) + duration
    common = sorted(set(theirs) & set(ours))
    assert len(common) >= len(theirs) - 1
    a, b = np.array([theirs[k] for k in common]), np.array([ours[k] for k in common])
    assert np.abs(b - a).max() <= 0.02 * a.max()                       # every line within 2% of the longest
    assert np.median(np.abs(b - a) / a) < 0.01 and math.isclose(a.sum(), b.sum(), rel_tol=0.01)


@pytest.mark.parametrize("kind, residual", [("zv", 1e-9), ("mzv", 1e-9), ("ei", 0.05 + 1e-9)])
def test_shapers_cancel_the_vibration_they_are_designed_for(kind, residual):
    frequency, damping = 40.0, 0.1
    amplitudes, times = shaper_pulses(kind, frequency, damping)
    assert math.isclose(amplitudes.sum(), 1.0) and math.isclose((amplitudes * times).sum(), 0.0, abs_tol=1e-12)
    w = 2 * math.pi * frequency
    wd = w * math.sqrt(1 - damping ** 2)
    # residual vibration of a damped mode after the pulse train (Singer & Seering), relative to one unit impulse
    t_end = times.max()
    weights = amplitudes * np.exp(-damping * w * (t_end - times))
    vibration = abs(np.sum(weights * np.exp(1j * wd * times)))
    assert vibration <= residual
    assert vibration < 0.5 * abs(np.exp(1j * wd * 0))  # and far below an unshaped move
