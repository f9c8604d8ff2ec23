"""The procedural test prints' geometry."""

from __future__ import annotations

import numpy as np

from kiln.recipes.printer.procedural_prints import honeycomb


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
