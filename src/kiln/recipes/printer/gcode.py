"""A small, strict G-code reader for FDM printers: text -> straight moves with their source lines.

Reads G0/G1 (X Y Z E F), G2/G3 arcs (I J or R, optional Z and E; cut into ~1 mm chords as Marlin's
MM_PER_ARC_SEGMENT does), G90/G91 (positions and E), G92, M82/M83, G20/G21. Every other command
(temperatures, fans, M204, G28, T0 ...) is ignored and counted. A malformed line is reported with its
line number and reason, and the rest of the file is still read. A value that no printer reaches (a position or
an arc centre beyond MAX_COORDINATE_MM, more filament in one move than that) stops the read with one line naming
the line, and so does a file of more than MAX_MOVES moves: the simulator's memory and time grow with them.

Why not a package: on real slicer files `gcodeparser` 0.3 accepts malformed words silently
(`X1O` -> X=1 plus a flag O, `X1.2.3` -> the text '1.2.3') and `pygcode` 0.2 drops E words; both
lose what a simulator needs (see docs/printer.md).
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.errors import KilnError

MM_PER_ARC_SEGMENT = 1.0      # Marlin's default chord length for G2/G3
INCH = 25.4
MAX_COORDINATE_MM = 10_000.0  # 10 m: beyond the largest printers' beds, so a larger value is a damaged file or other units
MIN_FEEDRATE_MM_MIN = 1.0     # F1: slower moves would take days to simulate
MAX_MOVES = 5_000_000         # straight moves (arcs count a chord each) one file may give: 360 MB as the reader holds them
MAX_GCODE_BYTES = 2 ** 30     # 1 GiB of text, about 30 million lines
WORD = re.compile(r"\s*([A-Za-z])\s*([-+]?(?:\d+\.?\d*|\.\d+))")
COMMAND = re.compile(r"\s*([GMTgmt])\s*(\d+(?:\.\d+)?)")
MOVE_WORDS = {0: "XYZEF", 1: "XYZEF", 2: "XYZEFIJR", 3: "XYZEFIJR", 92: "XYZE"}
LINE_BREAK = re.compile(r"\r\n?|\n")  # as editors and firmware count lines; str.splitlines() also breaks at \f, \x1c ...


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
    source: str = "G-code"                                                    # what messages call the file

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
        if not abs(radius) <= 3 * MAX_COORDINATE_MM:  # also inf; its centre would be out of reach (checked below)
            raise OutOfReach(f"the arc's radius {radius:g} mm puts its centre outside ±{MAX_COORDINATE_MM:g} mm")
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
    for axis, value in zip("XY", centre):
        if not abs(value) <= MAX_COORDINATE_MM:  # its chords would number 2 pi r per mm
            raise OutOfReach(f"the arc's centre {axis} {value:g} mm is outside ±{MAX_COORDINATE_MM:g} mm, beyond any printer")
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
    far = np.abs(points[:, :2]).max(0)
    for axis, value in zip("XY", far):
        if not value <= MAX_COORDINATE_MM:  # a circle around a centre within reach may still pass beyond it
            raise OutOfReach(f"the arc reaches {axis} ±{value:g} mm, outside ±{MAX_COORDINATE_MM:g} mm, beyond any printer")
    return points


class OutOfReach(ValueError):
    """A value no printer reaches: the read stops at its line."""


def check_reach(position: list[float], extrude: float = 0.0) -> None:
    for axis, value in zip("XYZ", position):
        if not abs(value) <= MAX_COORDINATE_MM:  # also inf and nan (400 digits read as inf)
            raise OutOfReach(f"{axis} {value:g} mm is outside ±{MAX_COORDINATE_MM:g} mm, beyond any printer")
    if not abs(extrude) <= MAX_COORDINATE_MM:
        raise OutOfReach(f"E {extrude:g} mm of filament in one move is more than {MAX_COORDINATE_MM:g} mm")


class Reader:
    """The firmware's modal state (position, E, feedrate, absolute/relative, units) and the moves read so far."""

    def __init__(self):
        self.pos, self.e_pos = [0.0, 0.0, 0.0], 0.0
        self.feed = 25.0            # mm/s until the first F word (Marlin's default feedrate is 1500 mm/min)
        self.absolute, self.absolute_e, self.scale = True, True, 1.0
        self.rows = array("d")      # (x0, y0, z0, x1, y1, z1, extrude, feed, line) per straight move, flat: 72 bytes a move
        self.ignored, self.errors = Counter(), []

    def line(self, number: int, raw: str) -> None:
        """Read one line: a malformed one is recorded in `errors` and skipped; OutOfReach stops the read."""
        code = strip_comment(raw)
        if not code.strip():
            return
        command = COMMAND.match(code)
        if command is None:
            self.errors.append((number, f"no G/M/T command at the start of '{code.strip()[:40]}'"))
            return
        letter, value = command.group(1).upper(), command.group(2)
        if len(value) > 20:  # no firmware has such a command; int() refuses 4300 digits
            self.errors.append((number, f"command {letter}{value[:20]}... has {len(value)} digits"))
            return
        name = f"{letter}{value}"
        if name in ("M82", "M83"):
            self.absolute_e = name == "M82"
            return
        if letter != "G" or "." in value or int(value) not in (0, 1, 2, 3, 20, 21, 90, 91, 92):
            self.ignored[name] += 1  # M-codes may carry free text (M117 hello): not parsed
            return
        g = int(value)
        try:
            words = parse_words(code[command.end():])
            unknown = [k for k in words if k not in MOVE_WORDS.get(g, "")]
            if unknown:
                raise ValueError(f"G{g} takes no {unknown[0]} word")
            if g in (20, 21):
                self.scale = INCH if g == 20 else 1.0
            elif g in (90, 91):
                self.absolute = self.absolute_e = g == 90  # as Marlin: G90/G91 set E too, until M82/M83
            elif g == 92:
                self.set_position(words)
            else:
                self.move(g, words, number)
        except OutOfReach:
            raise
        except ValueError as err:
            self.errors.append((number, str(err)))

    def set_position(self, words: dict[str, float]) -> None:
        """G92: the current position becomes the given one (all zero without words)."""
        if not words:
            self.pos, self.e_pos = [0.0, 0.0, 0.0], 0.0
        pos = [words[k] * self.scale if k in words else p for k, p in zip("XYZ", self.pos)]
        check_reach(pos)  # the next move travels from here
        self.pos = pos
        self.e_pos = words["E"] * self.scale if "E" in words else self.e_pos

    def move(self, g: int, words: dict[str, float], number: int) -> None:
        """G0/G1 as one straight move, G2/G3 as chords of MM_PER_ARC_SEGMENT."""
        feed = self.feed
        if "F" in words:
            if not math.isfinite(words["F"]):
                raise ValueError("F has too many digits for a feedrate")
            if words["F"] <= 0:
                raise ValueError(f"F{words['F']:g} is not a positive feedrate")
            if words["F"] * self.scale < MIN_FEEDRATE_MM_MIN:
                raise ValueError(f"F{words['F']:g} is below {MIN_FEEDRATE_MM_MIN:g} mm/min, the slowest feedrate read")
            feed = words["F"] * self.scale / 60.0
        target = [(words[k] * self.scale + (0.0 if self.absolute else p)) if k in words else p for k, p in zip("XYZ", self.pos)]
        de, e_pos = 0.0, self.e_pos
        if "E" in words:
            e = words["E"] * self.scale
            de = e - e_pos if self.absolute_e else e
            e_pos = e if self.absolute_e else e_pos + e
        check_reach(target, de)
        if g in (2, 3):
            points = arc_points(np.array(self.pos), np.array(target), words, clockwise=g == 2, scale=self.scale)
            previous = np.vstack([np.array(self.pos)[None], points[:-1]])
            k = len(points)
            chords = np.column_stack([previous, points, np.full(k, de / k), np.full(k, feed), np.full(k, float(number))])
            self.rows.frombytes(chords.astype(np.float64).tobytes())
        else:
            self.rows.extend((*self.pos, *target, de, feed, number))
        self.pos, self.e_pos, self.feed = target, e_pos, feed

    def moves(self, source: str) -> Moves:
        table = np.frombuffer(self.rows, dtype=np.float64).reshape(-1, 9)
        moves = Moves(table[:, 0:3], table[:, 3:6], table[:, 6], table[:, 7], table[:, 8].astype(np.int64),
                      ignored=self.ignored, errors=self.errors, source=source)
        assign_layers(moves)
        return moves


def read_gcode(text: str, source: str = "G-code") -> Moves:
    """Parse G-code text into straight moves (see the module docstring for what is read); `source` names the
    file in the one-line error that stops the read at a value out of reach."""
    reader = Reader()
    for number, raw in enumerate(LINE_BREAK.split(text), start=1):
        try:
            reader.line(number, raw)
        except OutOfReach as err:
            raise KilnError(f"{source} line {number}: {err}; fix or remove the line") from None
        if len(reader.rows) > 9 * MAX_MOVES:
            raise KilnError(f"{source} line {number}: more than {MAX_MOVES:,} moves (an arc counts one per "
                            f"{MM_PER_ARC_SEGMENT:g} mm chord); split the file")
    return reader.moves(source)


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
    """A G-code file's moves; one line for a file that cannot be read, is binary or too large, or has nothing to print."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_GCODE_BYTES:
            raise KilnError(f"'{path}' is {size:,} bytes; kiln reads G-code files of at most {MAX_GCODE_BYTES:,} bytes")
        text = path.read_text(errors="replace")
    except OSError as err:
        raise KilnError(f"cannot read G-code file '{path}': {err.strerror}") from None
    if "\x00" in text:  # text never holds NUL; an image, an archive or a binary G-code (.bgcode) does
        raise KilnError(f"'{path}' is binary (a NUL byte at offset {text.index(chr(0))}), not G-code text")
    moves = read_gcode(text, f"'{path}'")
    if len(moves) == 0 or not (np.abs(moves.end - moves.start).sum() > 0):
        raise KilnError(f"'{path}' has no moves (G0/G1/G2/G3 that change X, Y or Z); is it a G-code file?")
    if len(moves.layer_z) == 0:
        raise KilnError(f"'{path}' never extrudes (no G1 with a positive E), so it has no layers to simulate")
    return moves
