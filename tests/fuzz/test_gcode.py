"""printer: a user's G-code files (`read_gcode_file`, the `models:` of `kiln data printer`). Each example is a valid
small program (G21/G90/G91/M82/M83/G92, G0/G1 with X Y Z E F, G2/G3 arcs with I J or R, ;LAYER and other comments)
made hostile: random bytes, a truncation, byte flips, one word's or command's number replaced by a hostile one (nan,
inf, 1e308, -1e8, 400 or 5000 digits, empty, letters), an inserted hostile line, bytes that are not UTF-8, or other
line breaks. The read either gives moves whose positions, extrusions and feedrates are finite and within
MAX_COORDINATE_MM, on lines the file has, or refuses in one KilnError line naming the file (and a line it has)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.recipes.printer.gcode import MAX_COORDINATE_MM, MAX_MOVES, read_gcode_file

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

PROGRAM = """\
; kiln fuzz part
G21 ; millimetres
G90
M82
G92 E0
M104 S200
G1 Z0.2 F1200
;LAYER:0
G1 X10 Y0 E1 F1800
G1 X10 Y10 E2
G2 X0 Y10 I-5 J0 E3
G3 X0 Y0 R5 E4
G0 X5 Y5 (travel)
;LAYER:1
G91
G1 Z0.2
M83
G1 X5 Y0 E0.5
G3 X-5 Y0 I-2.5 J0 E0.5
G90
G92 X0 Y0
G1 X2 Y2 E5.4 F600
"""
WORD = re.compile(rb"([A-Za-z])([-+]?[0-9.]+)")  # a letter and its number
HOSTILE_NUMBERS = ["nan", "inf", "1e308", "-1e8", "9" * 400, "9" * 5000, "", "abc", "-0", ".", "1.2.3", "10000",
                   "-10000.0001", "0.0001"]
hostile_numbers = st.one_of(st.sampled_from(HOSTILE_NUMBERS),
                            st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                      st.integers(-10**12, 10**12).map(str), st.text("0123456789.-+eE", max_size=12)))
LINES = [b"G0", b"G1", b"G2", b"G3", b"G92", b"G20", b"G91", b"M83", b"G28", b"T0", b"G" + b"1" * 5000, b"G1.5", b"N10 G1",
         b"X1", b"\xff\xfe"]


def code_words(raw: bytes) -> list[re.Match]:
    """The words of the program outside its comments (a mutation there changes what is read)."""
    found, offset = [], 0
    for line in raw.split(b"\n"):
        code = line.split(b";", 1)[0].split(b"(", 1)[0]
        found += [m for m in WORD.finditer(raw, offset, offset + len(code))]
        offset += len(line) + 1
    return found


@st.composite
def hostile_line(draw) -> bytes:
    words = draw(st.lists(st.tuples(st.sampled_from("XYZEFIJRSQ"), hostile_numbers), max_size=4))
    return draw(st.sampled_from(LINES)) + b"".join(b" " + k.encode() + v.encode() for k, v in words)


def damage(draw, raw: bytes) -> tuple[bytes, str]:
    """The program made hostile in one way; returns the bytes and what was done."""
    raw = bytearray(raw)
    kind = draw(st.sampled_from(["random", "truncate", "flip", "word", "word", "word", "command", "line", "line", "utf8",
                                 "breaks", "none"]))
    if kind in BYTE_DAMAGE:
        raw = bytearray(damage_bytes(draw, bytes(raw), kind, max_random=400))
    elif kind == "word":  # the number of a word or a few (X10 -> Xnan), letters picked first: each is as likely
        words = code_words(bytes(raw))
        letters = draw(st.lists(st.sampled_from(sorted({m.group(1) for m in words})), min_size=1, max_size=3))
        picks = [draw(st.sampled_from([m for m in words if m.group(1) == letter])) for letter in letters]
        for match in sorted({m.start(): m for m in picks}.values(), key=lambda m: -m.start()):  # from the end: offsets hold
            raw[match.start(2):match.end(2)] = draw(hostile_numbers).encode()
    elif kind == "command":  # one command's number (G1 -> G99999, G1.5, 5000 digits)
        lines = bytes(raw).split(b"\n")
        index = draw(st.sampled_from([i for i, line in enumerate(lines) if line[:1] in (b"G", b"M")]))
        number = draw(hostile_numbers).encode()
        lines[index] = re.sub(rb"^([GM])[0-9.]*", lambda m: m.group(1) + number, lines[index], count=1)
        raw = bytearray(b"\n".join(lines))
    elif kind == "line":
        lines = bytes(raw).split(b"\n")
        lines.insert(draw(st.integers(0, len(lines))), draw(hostile_line()))
        raw = bytearray(b"\n".join(lines))
    elif kind == "utf8":  # bytes that are not UTF-8 (or are, but not ASCII), anywhere
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(raw)))
            raw[at:at] = draw(st.sampled_from([b"\xff", b"\x80", b"\xc3", b"\xe2\x80", b"\xc3\xa9", b"\xef\xbb\xbf", b"\x00"]))
    elif kind == "breaks":  # the line breaks of other systems, and characters str.splitlines() also breaks at
        sep = draw(st.sampled_from([b"\r\n", b"\r", b"\x0c", b"\x0b", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8", b"\n\n"]))
        raw = bytearray(bytes(raw).replace(b"\n", sep, draw(st.integers(1, 30))))
    return bytes(raw), kind


def line_count(path: Path) -> int:
    """Lines as an editor (and the firmware) counts them: ends at \\n, \\r\\n or \\r."""
    return path.read_text(errors="replace").count("\n") + 1  # read_text already turned \r\n and \r into \n


def reads_or_refuses(path: Path):
    """The contract: moves within reach on lines the file has, or one line naming the file (and a line it has)."""
    try:
        moves = read_gcode_file(path)
    except KilnError as err:
        message = str(err)
        assert one_line(err), repr(message)
        assert str(path) in message, message
        line = re.search(r" line (\d+)", message.replace(str(path), ""))
        assert line is None or 1 <= int(line.group(1)) <= line_count(path), message
        return None
    m = len(moves)
    assert 0 < m <= MAX_MOVES
    assert moves.start.shape == moves.end.shape == (m, 3)
    assert moves.extrude.shape == moves.feedrate.shape == moves.line.shape == moves.layer.shape == (m,)
    for name in ("start", "end", "extrude"):
        values = getattr(moves, name)
        assert np.isfinite(values).all() and (np.abs(values) <= MAX_COORDINATE_MM).all(), (name, np.abs(values).max())
    assert np.isfinite(moves.feedrate).all() and (moves.feedrate > 0).all(), moves.feedrate
    assert len(moves.layer_z) >= 1 and np.isfinite(moves.layer_z).all()
    assert ((moves.layer >= 0) & (moves.layer < len(moves.layer_z))).all()
    lines = line_count(path)
    assert ((moves.line >= 1) & (moves.line <= lines)).all() and (np.diff(moves.line) >= 0).all(), (moves.line, lines)
    for number, reason in moves.errors:
        assert 1 <= number <= lines and reason.strip() and "\n" not in reason, (number, reason)
    return moves


@settings(max_examples=1500)
@given(st.data())
def test_a_hostile_gcode_file_reads_within_reach_or_refuses_in_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "part.gcode"
    raw, kind = damage(data.draw, PROGRAM.encode())
    note(f"{kind}: {raw[:600]!r}")
    path.write_bytes(raw)
    event("read" if reads_or_refuses(path) else "refused")


def test_the_untouched_program_reads(tmp_path):
    path = tmp_path / "part.gcode"
    path.write_text(PROGRAM)
    moves = reads_or_refuses(path)
    assert not moves.errors and moves.ignored["M104"] == 1 and len(moves.layer_z) == 2
    assert len(code_words(PROGRAM.encode())) == 56  # every word the mutations may pick; none inside a comment


@pytest.fixture
def no_fsync(monkeypatch):
    """Durable writes are the engine's tests' subject; here an fsync per file would be most of an example's time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@settings(max_examples=25)
@given(st.data())
def test_kiln_data_printer_exits_2_with_one_line_or_writes_a_dataset(tmp_path_factory, capsys, no_fsync, data):
    from kiln.cli import main

    work = tmp_path_factory.mktemp("cli")
    part, out = work / "part.gcode", work / "out"
    raw, kind = damage(data.draw, PROGRAM.encode())
    note(f"{kind}: {raw[:600]!r}")
    part.write_bytes(raw)
    capsys.readouterr()
    code = main(["data", "printer", "--out", str(out), "--models", str(part), "--layers", "all"])
    err = capsys.readouterr().err
    event(f"exit {code}")
    if code == 0:
        assert (out / "dataset.json").exists() and not err.strip(), err
        return
    assert code == 2 and err.startswith("kiln: error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
