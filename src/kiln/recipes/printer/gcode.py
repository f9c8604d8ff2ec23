"""A small, strict G-code reader for FDM printers: text -> straight moves with their source lines.

Reads G0/G1 (X Y Z E F), G2/G3 arcs (I J or R, optional Z and E; cut into ~1 mm chords as Marlin's
MM_PER_ARC_SEGMENT does), G90/G91 (positions and E), G92, M82/M83, G20/G21. Every other command
(temperatures, fans, M204, G28, T0 ...) is ignored and counted. A malformed line is reported with its
line number and reason, and the rest of the file is still read.

Why not a package: on real slicer files `gcodeparser` 0.3 accepts malformed words silently
(`X1O` -> X=1 plus a flag O, `X1.2.3` -> the text '1.2.3') and `pygcode` 0.2 drops E words; both
lose what a simulator needs (see docs/printer.md).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.errors import KilnError

MM_PER_ARC_SEGMENT = 1.0      # Marlin's default chord length for G2/G3
INCH = 25.4
WORD = re.compile(r"\s*([A-Za-z])\s*([-+]?(?:\d+\.?\d*|\.\d+))")
COMMAND = re.compile(r"\s*([GMTgmt])\s*(\d+(?:\.\d+)?)")
MOVE_WORDS = {0: "XYZEF", 1: "XYZEF", 2: "XYZEFIJR", 3: "XYZEFIJR", 92: "XYZE"}


@dataclass
class Moves:
    """Straight moves in machine millimetres, in file order."""

    start: np.ndarray            # [M, 3] x, y, z at the move's start
    end: np.ndarray              # [M, 3]
    extrude: np.ndarray          # [M] filament length fed during the move (mm, relative)
    feedrate: np.ndarray         # [M] requested speed (mm/s)
    line: np.ndarray             # [M] 1-based source line
    layer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [M] layer index (see assign_layers)
    layer_z: np.ndarray = field(default_factory=lambda: np.zeros(0))          # [L] height of each layer
    ignored: Counter = field(default_factory=Counter)                         # command -> count
    errors: list[tuple[int, str]] = field(default_factory=list)               # (line, reason)

    def __len__(self) -> int:
        return len(self.line)


def strip_comment(text: str) -> str:
    """Drop `; ...` and `( ... )` comments, a leading line number N123 and a trailing checksum *71."""
    text = text.split(";", 1)[0]
    if "(" in text:
        text = re.sub(r"\([^)]*\)", " ", text)
    text = re.sub(r"^\s*[Nn]\d+", "", text)
    return text.split("*", 1)[0]


def parse_words(rest: str) -> dict[str, float]:
    """'X10 Y-2.5 E.3' -> {'X': 10.0, 'Y': -2.5, 'E': 0.3}; ValueError naming the first bad text."""
    words, pos = {}, 0
    while pos < len(rest):
        match = WORD.match(rest, pos)
        if match is None:
            bad = rest[pos:].strip()
            if not bad:
                break
            raise ValueError(f"cannot read '{bad.split()[0]}' as a letter followed by a number")
        letter = match.group(1).upper()
        if letter in words:
            raise ValueError(f"word {letter} appears twice")
        words[letter] = float(match.group(2))
        pos = match.end()
    return words


def arc_points(start: np.ndarray, end: np.ndarray, words: dict[str, float], clockwise: bool, scale: float) -> np.ndarray:
    """Chord end points [K, 3] of a G2/G3 arc in the XY plane (helical in Z), as Marlin's plan_arc cuts it."""
    if "R" in words:
        radius = words["R"] * scale
        chord = end[:2] - start[:2]
        half = np.linalg.norm(chord) / 2
        if half == 0 or abs(radius) < half - 1e-6:
            raise ValueError(f"R{words['R']:g} is too small for an arc whose end is {2 * half:.3f} mm away")
        # centre on the chord's perpendicular bisector; R < 0 takes the longer arc (as Marlin)
        h = math.sqrt(max(radius * radius - half * half, 0.0))
        normal = np.array([-chord[1], chord[0]]) / (2 * half)
        side = (1 if clockwise else -1) * (1 if radius > 0 else -1)
        centre = start[:2] + chord / 2 - side * h * normal
    elif "I" in words or "J" in words:
        centre = start[:2] + np.array([words.get("I", 0.0), words.get("J", 0.0)]) * scale
    else:
        raise ValueError("an arc needs I/J (centre offset) or R (radius)")
    r0, r1 = start[:2] - centre, end[:2] - centre
    radius = float(np.hypot(*r0))
    if radius == 0:
        raise ValueError("the arc's centre is its start point")
    a0, a1 = math.atan2(r0[1], r0[0]), math.atan2(r1[1], r1[0])
    sweep = a1 - a0
    if clockwise:
        sweep = sweep if sweep < 0 else sweep - 2 * math.pi   # a full circle when start == end
    else:
        sweep = sweep if sweep > 0 else sweep + 2 * math.pi
    segments = max(1, int(abs(sweep) * radius / MM_PER_ARC_SEGMENT))
    frac = np.arange(1, segments + 1) / segments
    angle = a0 + sweep * frac
    points = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle),
                       start[2] + (end[2] - start[2]) * frac], 1)
    points[-1] = end  # the last chord ends exactly where the command says
    return points


def read_gcode(text: str) -> Moves:
    """Parse G-code text into straight moves (see the module docstring for what is read)."""
    pos = [0.0, 0.0, 0.0]
    e_pos = 0.0
    feed = 25.0                 # mm/s until the first F word (Marlin's default feedrate is 1500 mm/min)
    absolute, absolute_e, scale = True, True, 1.0
    rows: list[tuple] = []      # (x0, y0, z0, x1, y1, z1, extrude, feed, line) per straight move
    ignored, errors = Counter(), []
    for number, raw in enumerate(text.splitlines(), start=1):
        code = strip_comment(raw)
        if not code.strip():
            continue
        command = COMMAND.match(code)
        if command is None:
            errors.append((number, f"no G/M/T command at the start of '{code.strip()[:40]}'"))
            continue
        letter, value = command.group(1).upper(), command.group(2)
        name = f"{letter}{value}"
        if name in ("M82", "M83"):
            absolute_e = name == "M82"
            continue
        if letter != "G" or "." in value or int(value) not in (0, 1, 2, 3, 20, 21, 90, 91, 92):
            ignored[name] += 1  # M-codes may carry free text (M117 hello): not parsed
            continue
        g = int(value)
        try:
            words = parse_words(code[command.end():])
            unknown = [k for k in words if k not in MOVE_WORDS.get(g, "")]
            if unknown:
                raise ValueError(f"G{g} takes no {unknown[0]} word")
        except ValueError as err:
            errors.append((number, str(err)))
            continue
        if g in (20, 21):
            scale = INCH if g == 20 else 1.0
        elif g in (90, 91):
            absolute = absolute_e = g == 90  # as Marlin: G90/G91 set E too, until M82/M83
        elif g == 92:
            if not words:
                pos, e_pos = [0.0, 0.0, 0.0], 0.0
            pos = [words[k] * scale if k in words else p for k, p in zip("XYZ", pos)]
            e_pos = words["E"] * scale if "E" in words else e_pos
        else:
            if "F" in words:
                if words["F"] <= 0:
                    errors.append((number, f"F{words['F']:g} is not a positive feedrate"))
                    continue
                feed = words["F"] * scale / 60.0
            target = [(words[k] * scale + (0.0 if absolute else p)) if k in words else p for k, p in zip("XYZ", pos)]
            de = 0.0
            if "E" in words:
                e = words["E"] * scale
                de = e - e_pos if absolute_e else e
                e_pos = e if absolute_e else e_pos + e
            if g in (2, 3):
                try:
                    points = arc_points(np.array(pos), np.array(target), words, clockwise=g == 2, scale=scale)
                except ValueError as err:
                    errors.append((number, str(err)))
                    continue
                previous = np.vstack([np.array(pos)[None], points[:-1]])
                share = de / len(points)
                rows.extend((*a, *b, share, feed, number) for a, b in zip(previous.tolist(), points.tolist()))
            else:
                rows.append((*pos, *target, de, feed, number))
            pos = target
    table = np.array(rows, dtype=np.float64).reshape(-1, 9)
    moves = Moves(table[:, 0:3], table[:, 3:6], table[:, 6], table[:, 7], table[:, 8].astype(np.int64),
                  ignored=ignored, errors=errors)
    assign_layers(moves)
    return moves


def assign_layers(moves: Moves) -> None:
    """Layers are the distinct heights of extruding moves (a Z-hop travel makes none); every move belongs to the
    layer of the next extruding move, moves after the last one to the last layer."""
    printing = (moves.extrude > 0) & (np.linalg.norm(moves.end[:, :2] - moves.start[:, :2], axis=1) > 0)
    if not printing.any():
        moves.layer, moves.layer_z = np.zeros(len(moves), np.int64), np.zeros(0)
        return
    z = np.round(moves.end[printing, 2], 4)
    moves.layer_z, layer_of_printing = np.unique(z, return_inverse=True)
    index = np.full(len(moves), -1)
    index[printing] = layer_of_printing
    # backfill: each move takes the layer of the next printing move
    next_printing = np.minimum.accumulate(np.where(printing, np.arange(len(moves)), len(moves))[::-1])[::-1]
    last = np.flatnonzero(printing)[-1]
    moves.layer = np.where(next_printing < len(moves), index[np.minimum(next_printing, last)], index[last])


def read_gcode_file(path: Path) -> Moves:
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise KilnError(f"cannot read G-code file '{path}': {err.strerror}") from None
    moves = read_gcode(text)
    if len(moves) == 0 or not (np.abs(moves.end - moves.start).sum() > 0):
        raise KilnError(f"'{path}' has no moves (G0/G1/G2/G3 that change X, Y or Z); is it a G-code file?")
    if len(moves.layer_z) == 0:
        raise KilnError(f"'{path}' never extrudes (no G1 with a positive E), so it has no layers to simulate")
    return moves
