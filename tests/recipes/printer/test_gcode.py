"""The G-code reader: modes, arcs, malformed lines, real slicer files (pyGCodeDecode's examples)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyGCodeDecode
import pytest

from kiln.errors import KilnError
from kiln.recipes.printer.gcode import MM_PER_ARC_SEGMENT, read_gcode, read_gcode_file

EXAMPLES = Path(pyGCodeDecode.__file__).parent / "examples" / "data"


def test_modes_units_and_set_position():
    moves = read_gcode("\n".join([
        "G21", "G90", "G1 X10 Y0 E1 F600",  # absolute XYZ and E
        "G91", "G1 X5 Y5 E2",               # G91: relative XYZ and E (as Marlin)
        "G90 ; back to absolute", "M83", "G1 X20 E0.5",  # M83: E relative again while XYZ is absolute
        "G92 X0 Y0 E0", "G1 X1 Y1",          # G92 redefines the current position
        "G20", "G1 X2 F60",                 # inches: X2 = 50.8 mm, F60 in/min = 25.4 mm/s
    ]))
    np.testing.assert_allclose(moves.end[:, :2], [[10, 0], [15, 5], [20, 5], [1, 1], [50.8, 1]])
    np.testing.assert_allclose(moves.start[3, :2], [0, 0])
    np.testing.assert_allclose(moves.extrude, [1, 2, 0.5, 0, 0])
    np.testing.assert_allclose(moves.feedrate, [10, 10, 10, 10, 25.4])
    assert moves.line.tolist() == [3, 5, 8, 10, 12] and not moves.errors


def test_malformed_lines_are_reported_and_the_rest_is_read():
    moves = read_gcode("G1 X1 Y1 E1 F1200\nG1 X1O Y5\nhello there\nG1 X Y2\nG1 X2 X3\nG2 X5 Y5 R1\nG1 F-5\nG1 X4 Y4 E1\n"
                       "M117 any text, even G1 X9\nG1 X5 Q3\n")
    lines = dict(moves.errors)
    assert sorted(lines) == [2, 3, 4, 5, 6, 7, 10]
    assert "'O'" in lines[2] and "no G/M/T command" in lines[3] and "'X'" in lines[4] and "twice" in lines[5]
    assert "too small" in lines[6] and "feedrate" in lines[7] and "takes no Q" in lines[10]
    np.testing.assert_allclose(moves.end[:, :2], [[1, 1], [4, 4]])  # the good lines around them still count
    assert moves.ignored["M117"] == 1


@pytest.mark.parametrize("command", ["G2", "G3"])
def test_arcs_follow_the_circle_in_their_direction(command):
    # half circle from (10, 0) to (-10, 0) around the origin; G2 goes through y < 0, G3 through y > 0
    ij = read_gcode(f"G1 X10 Y0\n{command} X-10 Y0 I-10 J0 E3")
    points = ij.end[1:, :2]
    np.testing.assert_allclose(np.hypot(points[:, 0], points[:, 1]), 10, atol=1e-9)
    chords = np.linalg.norm(ij.end[1:, :2] - ij.start[1:, :2], axis=1)
    assert chords.max() <= MM_PER_ARC_SEGMENT * 1.05 and np.isclose(chords.sum(), 2 * 10 * np.sin(np.pi / 2 / len(chords)) * len(chords))
    assert np.sign(points[len(points) // 2, 1]) == (-1 if command == "G2" else 1)
    assert np.isclose(ij.extrude[1:].sum(), 3)
    radius = read_gcode(f"G1 X10 Y0\n{command} X-10 Y0 R10 E3")  # the R form draws the same arc
    np.testing.assert_allclose(radius.end, ij.end, atol=1e-9)


def test_layers_are_heights_of_printing_moves_not_z_hops():
    moves = read_gcode("M83\nG1 Z0.2\nG1 X10 E1\nG1 Z0.6\nG1 X0\nG1 Z0.2\nG1 X5 E1\nG1 Z0.4\nG1 X9\nG1 X0 E1\n")
    np.testing.assert_allclose(moves.layer_z, [0.2, 0.4])
    assert moves.layer.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("name", ["triangle", "bee", "cubhelix"])
def test_real_slicer_files_read_cleanly_and_agree_with_pygcodedecode(name):
    """Path length of every printing and travel move equals pyGCodeDecode's parse of the same file."""
    from pyGCodeDecode import gcode_interpreter

    moves = read_gcode_file(EXAMPLES / f"{name}.gcode")
    assert not moves.errors and len(moves.layer_z) >= 1
    setup = gcode_interpreter.setup(presets_file=EXAMPLES / "printer_presets.yaml", printer="prusa_mini", verbosity_level=0)
    states = gcode_interpreter.generate_states(filepath=EXAMPLES / f"{name}.gcode", initial_machine_setup=setup.check_initial_setup())
    vectors = [s.state_position.get_vec(withExtrusion=True) for s in states]
    positions = np.array([v for v in vectors if None not in v], float)  # it leaves positions undefined until the first move
    theirs = np.linalg.norm(np.diff(positions[:, :3], axis=0), axis=1).sum()
    ours = np.linalg.norm(moves.end - moves.start, axis=1).sum()
    before_theirs = np.linalg.norm(positions[0, :3] - moves.start[0])  # our path from the origin to where theirs begins
    assert np.isclose(ours, theirs + before_theirs, rtol=1e-9)
    assert np.isclose(moves.extrude.sum(), positions[-1, 3] - positions[0, 3], rtol=1e-9)


def test_files_without_moves_or_extrusion_are_clear_errors(tmp_path):
    (tmp_path / "empty.gcode").write_text("; nothing\nM104 S200\n")
    (tmp_path / "travel.gcode").write_text("G1 X10 Y10\nG1 X0 Y0\n")
    with pytest.raises(KilnError, match="has no moves"):
        read_gcode_file(tmp_path / "empty.gcode")
    with pytest.raises(KilnError, match="never extrudes"):
        read_gcode_file(tmp_path / "travel.gcode")
    with pytest.raises(KilnError, match="cannot read G-code file"):
        read_gcode_file(tmp_path / "missing.gcode")


HUGE = "9" * 400  # float() reads 400 digits as inf


@pytest.mark.parametrize("lines, line, reason", [
    (["G1 X100000000 Y5 E1"], 3, r"X 1e\+08 mm is outside"),
    ([f"G1 Y{HUGE} E1"], 3, r"Y inf mm is outside"),
    (["G91", "G1 X6000 E1", "G1 X6000 E1"], 5, r"X 12000 mm is outside"),     # relative moves that add up
    (["G20", "G1 X1000 E1"], 4, r"X 25400 mm is outside"),                      # inches
    (["G92 Z100000000"], 3, r"Z 1e\+08 mm is outside"),                         # a set position the next move travels from
    (["G1 X10 E100000000"], 3, r"E 1e\+08 mm of filament in one move is more than"),
    (["G1 X10 Y0 E1", "G2 X10 Y0 I100000 J0 E1"], 4, r"the arc's centre X 100010 mm is outside"),
])
def test_a_value_no_printer_reaches_stops_the_read_naming_the_file_and_line(tmp_path, lines, line, reason):
    path = tmp_path / "big.gcode"
    path.write_text("\n".join(["M83", "G1 Z0.2", *lines, "G1 X0 Y0 E1"]) + "\n")
    with pytest.raises(KilnError, match=rf"^'{re.escape(str(path))}' line {line}: {reason}"):
        read_gcode_file(path)


def test_a_feedrate_below_one_mm_per_minute_is_skipped_like_a_negative_one():
    moves = read_gcode("M83\nG1 Z0.2\nG1 X10 E1 F0.0001\nG1 X20 E1 F-5\nG1 X5 E1 F1\n")
    assert dict(moves.errors) == {3: "F0.0001 is below 1 mm/min, the slowest feedrate read", 4: "F-5 is not a positive feedrate"}
    np.testing.assert_allclose(moves.feedrate, [25.0, 1 / 60])  # the default until F, then F1 = 1 mm/min


def test_a_file_with_more_moves_than_the_bound_stops_at_the_line_that_crosses_it(monkeypatch):
    monkeypatch.setattr("kiln.recipes.printer.gcode.MAX_MOVES", 20)
    with pytest.raises(KilnError, match=r"^part line 3: more than 20 moves"):  # the half circle is cut into 31 chords of 1 mm
        read_gcode("G1 X5 Y0\nG1 X10 Y0\nG2 X-10 Y0 I-10 J0\n", source="part")


def test_binary_and_oversized_files_are_refused_before_parsing(tmp_path, monkeypatch):
    binary = tmp_path / "image.gcode"
    binary.write_bytes(b"G1 X1 E1\n\x89PNG\x00\x00\x1a")
    with pytest.raises(KilnError, match=rf"^'{re.escape(str(binary))}' is binary \(a NUL byte at offset 13\), not G-code text"):
        read_gcode_file(binary)
    monkeypatch.setattr("kiln.recipes.printer.gcode.MAX_GCODE_BYTES", 100)
    big = tmp_path / "big.gcode"
    big.write_text("G1 X1 E1\n" * 20)
    with pytest.raises(KilnError, match=r"is 180 bytes; kiln reads G-code files of at most 100 bytes"):
        read_gcode_file(big)


def test_kiln_data_printer_refuses_a_coordinate_of_1e8_in_one_line_before_allocating(tmp_path, capsys):
    """The issue's reproduction: one line of G-code made kiln data printer try to allocate about 50 GiB."""
    import tracemalloc

    from kiln.cli import main

    part = tmp_path / "part.gcode"
    part.write_text("M83\nG1 Z0.2\nG1 X10 Y10 E1 F1200\nG1 X100000000 Y10 E1\nG1 X10 Y20 E1\n")
    import kiln.recipes.printer.data  # noqa: F401  (imported before measuring: the modules are not the data's memory)

    tracemalloc.start()
    try:
        assert main(["data", "printer", "--out", str(tmp_path / "d"), "--models", str(part), "--layers", "all"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: '{part}' line 4: X 1e+08 mm is outside") and len(err.strip().splitlines()) == 1
    assert peak < 50 * 2 ** 20 and not (tmp_path / "d").exists()


def test_a_command_of_thousands_of_digits_is_a_malformed_line_not_a_crash():
    """Found by tests/fuzz/test_gcode.py: int() refuses 4300 digits, and the ValueError escaped read_gcode."""
    moves = read_gcode("G1 X1 E1\nG" + "1" * 5000 + " X2\nG1 X3 E1\n")
    assert [n for n, _ in moves.errors] == [2] and "has 5000 digits" in moves.errors[0][1]
    assert moves.line.tolist() == [1, 3]


def test_a_feedrate_of_400_digits_is_a_malformed_line_not_an_infinite_speed():
    """Found by tests/fuzz/test_gcode.py: float() reads 400 digits as inf, which became the moves' feedrate."""
    moves = read_gcode(f"G1 X1 E1 F600\nG1 X2 E1 F{HUGE}\nG1 X3 E1\n")
    assert dict(moves.errors) == {2: "F has too many digits for a feedrate"}
    np.testing.assert_allclose(moves.feedrate, [10, 10])


@pytest.mark.parametrize("lines, reason", [
    (["G1 X9000 Y9000 E1", "G2 X9000 Y9000 I-9000 J-9000 E1"], r"the arc reaches X ±12727.9 mm, outside ±10000 mm"),
    (["G1 X10 Y0 E1", f"G2 X0 Y10 R{HUGE} E1"], r"the arc's radius inf mm puts its centre outside ±10000 mm"),
])
def test_an_arc_whose_circle_leaves_the_reach_stops_the_read(tmp_path, lines, reason):
    """Found by tests/fuzz/test_gcode.py: a centre within reach gave chords up to 12.7 m away (memory downstream grows
    with the extent), and an infinite R a numpy warning before the centre check."""
    path = tmp_path / "arc.gcode"
    import warnings

    path.write_text("\n".join(["M83", "G1 Z0.2", *lines]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KilnError, match=rf"^'{re.escape(str(path))}' line 4: {reason}"):
            read_gcode_file(path)


def test_lines_are_counted_at_line_breaks_only():
    """Found by tests/fuzz/test_gcode.py: str.splitlines() also breaks at \\f, \\x1c, \\x85 ..., so moves and messages
    named lines the file does not have."""
    moves = read_gcode("G1 X1 E1\x0cG1 X2 E1\x1cG1 X3\nG1 X4 E1\r\nG1 X5 E1\rG1 X6 E1\n")
    assert moves.line.tolist() == [2, 3, 4] and moves.errors == [(1, "word X appears twice")]  # one line, as Marlin reads it
