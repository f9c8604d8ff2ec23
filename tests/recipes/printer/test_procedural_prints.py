"""The procedural test prints' geometry."""

from __future__ import annotations

import numpy as np

from kiln.recipes.printer.gcode import read_gcode
from kiln.recipes.printer.procedural_prints import blob, honeycomb, procedural_gcode


def test_honeycomb_infill_is_one_path_of_hexagon_sides_inside_its_disc():
    side, radius = 1.9, 20.0
    path = honeycomb(radius, np.pi / 4, side)
    assert np.linalg.norm(path, axis=1).max() < radius
    step = np.diff(path, axis=0)
    length = np.linalg.norm(step, axis=1)
    inner = np.isclose(length, side)                       # the rest join one row to the next at the edge
    assert inner.mean() > 0.9
    heading = np.degrees(np.arctan2(step[:, 1], step[:, 0]))
    turn = np.abs((np.diff(heading) + 180) % 360 - 180)[inner[1:] & inner[:-1]]
    assert np.isclose(turn, 60).mean() > 0.95              # a hexagon's exterior angle (the rest: row ends)
    # hexagons, not zig-zags: neighbouring rows share their flats (unrotated, flats are horizontal), so inside the
    # disc each flat is drawn twice, once by each row
    flat = honeycomb(radius, 0.0, side)
    step = np.diff(flat, axis=0)
    horizontal = np.isclose(step[:, 1], 0) & np.isclose(np.abs(step[:, 0]), side)
    middles = np.round(flat[:-1][horizontal] + step[horizontal] / 2, 6)
    _, counts = np.unique(middles, axis=0, return_counts=True)
    assert (counts == 2).mean() > 0.75 and counts.max() == 2


def test_the_mixed_plate_prints_every_layer_afresh_over_the_speeds_slicers_use():
    moves = read_gcode(procedural_gcode("mixed", 12), "mixed")
    printing = moves.extrude > 0
    # walls 15-80 mm/s (outer at half: 7.5-40), infill 30-150, islands 10-30; travels 80-250
    assert 7.5 <= moves.feedrate[printing].min() and moves.feedrate[printing].max() <= 150
    assert np.ptp(moves.feedrate[printing]) > 60
    travel = (moves.extrude == 0) & (np.linalg.norm(moves.end[:, :2] - moves.start[:, :2], axis=1) > 0)
    assert 80 <= moves.feedrate[travel].min() and moves.feedrate[travel].max() <= 250
    speeds = [np.unique(np.round(moves.feedrate[printing & (moves.layer == k)])) for k in range(12)]
    assert len({tuple(s) for s in speeds}) == 12                 # no two layers print at the same speeds


def test_a_blob_outline_stays_near_its_circle_in_chords_of_the_given_length():
    rng = np.random.default_rng(0)
    for radius, segment in [(20.0, 0.3), (15.0, 2.0), (2.0, 0.2)]:
        outline = blob(rng, radius, segment)
        r = np.linalg.norm(outline, axis=1)
        assert (np.abs(r - radius) <= 0.36 * radius + 1e-9).all()  # three harmonics of at most 12% each
        chords = np.linalg.norm(np.diff(outline, axis=0, append=outline[:1]), axis=1)
        assert abs(np.median(chords) / segment - 1) < 0.4 if 2 * np.pi * radius / segment >= 12 else len(outline) == 12
