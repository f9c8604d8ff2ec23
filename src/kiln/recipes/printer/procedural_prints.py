"""Procedural test prints named as in the original guide (collect_3dbenchy, collect_bearing5, collect_nautilus,
collect_boat), plus a honeycomb-infill coaster and a `mixed` plate of slicer moves at varied speeds: each writes real
G-code (perimeters, rectilinear infill, travels with retraction, arcs for round parts), so the procedural models and a
user's files take the same path through the reader and the planner.
"""

from __future__ import annotations

import numpy as np

LAYER_HEIGHT = 0.2
LINE_WIDTH = 0.45
E_PER_MM = LINE_WIDTH * LAYER_HEIGHT / (np.pi * 0.875 ** 2)  # 1.75 mm filament
INFILL_SPACING = 2.0
SPEEDS = {"perimeter": 45.0, "infill": 90.0, "travel": 150.0, "retract": 40.0}  # mm/s


def ellipse(centre, rx, ry, points=72, start=0.0) -> np.ndarray:
    angle = start + np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([centre[0] + rx * np.cos(angle), centre[1] + ry * np.sin(angle)], 1)


def hull(length: float, width: float, transom: float = 0.0, points: int = 64) -> np.ndarray:
    """A boat hull outline: pointed bow at +x, a stern at -x that is flat `transom` wide (0: pointed)."""
    x = np.linspace(-length / 2, length / 2, points)
    u = (x + length / 2) / length                                 # 0 at the stern, 1 at the bow
    half = width / 2 * np.sqrt(np.clip(1 - u ** 2, 0, 1)) ** 0.8   # widest aft of midship, fine bow
    half = np.maximum(half, transom / 2 * (1 - u) ** 3)
    upper = np.stack([x, half], 1)
    lower = np.stack([x[::-1], -half[::-1]], 1)
    return np.concatenate([upper, lower[1:-1]])


def offset(polygon: np.ndarray, distance: float) -> np.ndarray:
    """Move every vertex `distance` inwards along its averaged edge normal (enough for these smooth outlines)."""
    edges = np.roll(polygon, -1, 0) - polygon
    normals = np.stack([-edges[:, 1], edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
    area = 0.5 * np.sum(polygon[:, 0] * np.roll(polygon[:, 1], -1) - np.roll(polygon[:, 0], -1) * polygon[:, 1])
    normals *= np.sign(area)                                      # point inside for either orientation
    vertex = normals + np.roll(normals, 1, 0)
    vertex /= np.maximum(np.linalg.norm(vertex, axis=1, keepdims=True), 1e-9)
    return polygon + distance * vertex


def scanlines(polygon: np.ndarray, angle: float, spacing: float) -> list[np.ndarray]:
    """Rectilinear infill of a polygon: segments [2, 2] along `angle`, every `spacing` mm, in zig-zag order."""
    c, s = np.cos(angle), np.sin(angle)
    rotated = polygon @ np.array([[c, -s], [s, c]])                # into a frame where the lines are horizontal
    a, b = rotated, np.roll(rotated, -1, 0)
    segments = []
    for k, y in enumerate(np.arange(rotated[:, 1].min() + spacing / 2, rotated[:, 1].max(), spacing)):
        crossing = (a[:, 1] <= y) != (b[:, 1] <= y)
        xs = np.sort(a[crossing, 0] + (y - a[crossing, 1]) * (b[crossing, 0] - a[crossing, 0]) / (b[crossing, 1] - a[crossing, 1]))
        for x0, x1 in zip(xs[0::2], xs[1::2]):
            segment = np.array([[x0, y], [x1, y]]) if k % 2 == 0 else np.array([[x1, y], [x0, y]])
            segments.append(segment @ np.array([[c, s], [-s, c]]))
    return segments


def honeycomb(radius: float, angle: float, side: float) -> np.ndarray:
    """Honeycomb infill of a disc as one continuous path [M, 2] (about the origin), like a slicer's: rows of
    flats and 60-degree diagonals (`side` mm each, a hexagon's side) whose flats meet the next row's, run in
    alternate directions and joined at the edge, so the head turns by 60 degrees every `side` mm and reverses at
    every row's end without a travel."""
    h = side * np.sqrt(3) / 2
    # one row's x and its height above the row's base: flat, up, flat, down (period 3 sides)
    x = np.arange(-radius - 3 * side, radius + 3 * side, 1.5 * side)[:, None] + np.array([0.0, side])
    x = x.ravel()
    up = (np.arange(len(x)) // 2) % 2
    rows = []
    for k, base in enumerate(np.arange(-radius, radius, h)):
        y = base + h * (up if k % 2 == 0 else 1 - up)        # rows mirrored, so their flats touch
        row = np.stack([x, y], 1)
        inside = np.linalg.norm(row, axis=1) < radius
        if inside.sum() >= 2:
            row = row[inside]                                  # a disc is convex: the inside vertices are one run
            rows.append(row if len(rows) % 2 == 0 else row[::-1])
    c, s = np.cos(angle), np.sin(angle)
    return np.concatenate(rows) @ np.array([[c, s], [-s, c]])


class Writer:
    """G-code text for one print: absolute XYZ, relative E (M83), retraction on every travel."""

    def __init__(self, name: str):
        self.lines = [f"; kiln procedural model: {name}", "G21", "G90", "M83", "G92 E0"]
        self.position = np.zeros(2)

    def travel(self, point, speed: float = SPEEDS["travel"]) -> None:
        self.lines += [f"G1 E-0.8 F{SPEEDS['retract'] * 60:.0f}",
                       f"G0 X{point[0]:.3f} Y{point[1]:.3f} F{speed * 60:.0f}",
                       f"G1 E0.8 F{SPEEDS['retract'] * 60:.0f}"]
        self.position = np.asarray(point, float)

    def path(self, points: np.ndarray, speed: str | float, closed: bool, travel: float = SPEEDS["travel"]) -> None:
        """Extrude along `points` at `speed` (a SPEEDS name or mm/s), after a travel at `travel` mm/s to its start."""
        points = np.vstack([points, points[:1]]) if closed else points
        if np.linalg.norm(points[0] - self.position) > 1e-6:
            self.travel(points[0], travel)
        self.lines.append(f"G1 F{(SPEEDS[speed] if isinstance(speed, str) else speed) * 60:.0f}")
        for p, q in zip(points[:-1], points[1:]):
            self.lines.append(f"G1 X{q[0]:.3f} Y{q[1]:.3f} E{np.linalg.norm(q - p) * E_PER_MM:.5f}")
        self.position = points[-1]

    def circle(self, centre, radius: float, speed: str, clockwise: bool = False) -> None:
        """A full circle as two G2/G3 half arcs (I/J form)."""
        start = np.array([centre[0] + radius, centre[1]])
        if np.linalg.norm(start - self.position) > 1e-6:
            self.travel(start)
        e = np.pi * radius * E_PER_MM
        g = "G2" if clockwise else "G3"
        self.lines += [f"G1 F{SPEEDS[speed] * 60:.0f}",
                       f"{g} X{centre[0] - radius:.3f} Y{centre[1]:.3f} I{-radius:.3f} J0 E{e:.5f}",
                       f"{g} X{start[0]:.3f} Y{start[1]:.3f} I{radius:.3f} J0 E{e:.5f}"]
        self.position = start

    def walls_and_infill(self, outline: np.ndarray, layer: int, walls: int = 2) -> None:
        for k in range(walls):
            self.path(offset(outline, (k + 0.5) * LINE_WIDTH), "perimeter", closed=True)
        inner = offset(outline, (walls + 0.5) * LINE_WIDTH)
        for segment in scanlines(inner, np.pi / 4 if layer % 2 == 0 else -np.pi / 4, INFILL_SPACING):
            self.path(segment, "infill", closed=False)

    def layer(self, z: float) -> None:
        self.lines.append(f"G1 Z{z:.3f} F600")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def boat(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A hull that flares from a narrow keel to a wide deck."""
    h = k / max(n - 1, 1)
    w.walls_and_infill(hull(70, 16 + 14 * np.sqrt(h)) + centre, k)


def benchy(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A benchy-like tug: transom hull with a round chimney stack, then a cabin with a ship's wheel on the upper layers."""
    h = k / max(n - 1, 1)
    if h < 0.55:
        w.walls_and_infill(hull(60, 22 + 8 * h, transom=14) + centre, k)
    else:
        w.walls_and_infill(hull(60, 26, transom=14) + centre, k, walls=1)
        cabin = np.array([[-18, -8], [4, -8], [4, 8], [-18, 8]], float) + centre
        w.path(cabin, "perimeter", closed=True)
        w.path(offset(cabin, LINE_WIDTH), "perimeter", closed=True)
    if h > 0.3:  # the round chimney stack (through the deck) and, in the cabin, the ship's wheel
        w.circle(centre + np.array([-8.0, 0.0]), 3.0, "perimeter")
    if h >= 0.55:
        for radius in (3.5, 3.05):
            w.circle(centre + np.array([-3.0, 0.0]), radius, "perimeter", clockwise=radius < 3.3)


def bearing(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A ball bearing with five balls: outer and inner races as arcs, the balls as small circles."""
    h = k / max(n - 1, 1)
    for radius in (22.0, 21.55, 9.0, 8.55):
        w.circle(centre, radius, "perimeter", clockwise=radius < 10)
    ball = 4.5 * np.sqrt(max(1 - (2 * h - 1) ** 2, 0.05))  # the balls' cross-section over the height
    for j in range(5):
        angle = 2 * np.pi * j / 5 + 0.3 * h
        w.circle(centre + 15.3 * np.array([np.cos(angle), np.sin(angle)]), ball, "perimeter")
    for lo, hi in ((9.7, 11.0), (19.6, 20.9)):  # solid bands next to the races, as concentric loops
        for r in np.arange(lo, hi, LINE_WIDTH):
            w.path(ellipse(centre, r, r, 64), "infill", closed=True)


def coaster(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A round coaster: two walls around honeycomb infill (rotated by 90 degrees every layer), the short zig-zag
    moves of sliced infill that the other models lack."""
    radius = 24.0 - 4.0 * k / max(n - 1, 1)                   # a slight taper
    outline = ellipse(centre, radius, radius, 96)
    for j in range(2):
        w.path(offset(outline, (j + 0.5) * LINE_WIDTH), "perimeter", closed=True)
    w.path(centre + honeycomb(radius - 2.5 * LINE_WIDTH, np.pi / 4 + (k % 2) * np.pi / 2, 1.9), "infill", closed=False)


def nautilus(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A nautilus shell: a logarithmic-spiral outer wall with radial septa between its chambers."""
    h = k / max(n - 1, 1)
    scale = 1.0 - 0.35 * abs(2 * h - 1)                        # thickest in the middle of the print
    theta = np.linspace(0, 3.2 * np.pi, 160)
    growth = 0.17
    r = 3.0 * np.exp(growth * theta) * scale
    spiral = np.stack([r * np.cos(theta), r * np.sin(theta)], 1) + centre
    inner_r = r * np.exp(-growth * 2 * np.pi)                  # the previous whorl
    inner = np.stack([inner_r * np.cos(theta), inner_r * np.sin(theta)], 1) + centre
    w.path(spiral, "perimeter", closed=False)
    w.path((centre + (spiral - centre) * 0.985)[::-1], "perimeter", closed=False)  # the wall's inner line, back
    for j in range(20, len(theta), 12):                        # septa from the outer whorl to the inner one
        w.path(np.stack([spiral[j], inner[j]]), "infill", closed=False)


def blob(rng: np.random.Generator, radius: float, segment: float) -> np.ndarray:
    """A star-shaped outline: a circle of `radius` with a few random harmonics, cut into chords of about `segment` mm
    (a slicer's curve resolution)."""
    harmonics = rng.integers(0, 7, size=3)
    amplitude = rng.uniform(0, 0.12, size=3) * radius
    points = max(int(2 * np.pi * radius / segment), 12)
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = radius + sum(a * np.cos(h * angle + rng.uniform(0, 2 * np.pi)) for a, h in zip(amplitude, harmonics))
    return np.stack([r * np.cos(angle), r * np.sin(angle)], 1)


def mixed(w: Writer, k: int, n: int, centre: np.ndarray) -> None:
    """A plate of slicer-like moves, drawn afresh every layer: a random outline with 1-3 walls (outer wall slower),
    rectilinear (sparse or solid) or honeycomb infill, and a few small islands; speeds drawn per feature over the
    range slicers use (walls 15-80 mm/s, infill 30-150, small perimeters 10-30, travels 80-250), curves cut into
    0.3-2 mm chords. The guide's models print at three fixed speeds, which a user's sliced file rarely matches."""
    rng = np.random.default_rng(k)
    travel = rng.uniform(80, 250)
    outline = blob(rng, rng.uniform(10, 24), rng.uniform(0.3, 2.0)) + centre
    wall = rng.uniform(15, 80)
    walls = int(rng.integers(1, 4))
    for j in reversed(range(walls)):                           # inner walls first, the outer one last and slower
        w.path(offset(outline, (j + 0.5) * LINE_WIDTH), wall * (0.5 if j == 0 else 1.0), closed=True, travel=travel)
    inner = offset(outline, (walls + 0.5) * LINE_WIDTH)
    infill = rng.uniform(30, 150)
    if rng.random() < 0.3:
        radius = 0.8 * np.linalg.norm(inner - centre, axis=1).min()
        w.path(centre + honeycomb(radius, rng.uniform(0, np.pi), rng.uniform(1.0, 3.0)), infill, closed=False, travel=travel)
    else:
        spacing = LINE_WIDTH if rng.random() < 0.4 else rng.uniform(1.0, 4.0)  # solid or sparse
        for segment in scanlines(inner, rng.uniform(0, np.pi), spacing):
            w.path(segment, infill, closed=False, travel=travel)
    for _ in range(int(rng.integers(0, 5))):                   # small islands beside the part: slow, short chords
        place = centre + rng.uniform(28, 40) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        w.path(place + blob(rng, rng.uniform(1.0, 4.0), rng.uniform(0.2, 0.6)), rng.uniform(10, 30), closed=True, travel=travel)


MODELS = {"3dbenchy": benchy, "bearing5": bearing, "nautilus": nautilus, "boat": boat, "coaster": coaster,
          "mixed": mixed}
CENTRES = {"3dbenchy": (110.0, 110.0), "bearing5": (90.0, 120.0), "nautilus": (120.0, 100.0), "boat": (100.0, 110.0),
           "coaster": (110.0, 110.0), "mixed": (110.0, 110.0)}


def procedural_gcode(name: str, num_layers: int) -> str:
    """G-code of a procedural model with `num_layers` layers of 0.2 mm."""
    w = Writer(name)
    centre = np.array(CENTRES[name])
    for k in range(num_layers):
        w.layer(LAYER_HEIGHT * (k + 1))
        MODELS[name](w, k, num_layers, centre)
    return w.text()
