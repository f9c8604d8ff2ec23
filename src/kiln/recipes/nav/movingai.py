"""MovingAI benchmark files (https://movingai.com/benchmarks/formats.html): .map grids and .scen start/goal pairs.

Both readers raise ValueError naming the file and line. Neither allocates from a declared size before checking it:
a .map's height x width is bounded and checked against the rows the file really has, a .scen's lines are read one
at a time, each of bounded length, up to MAX_PAIRS of them.
"""

import itertools
from pathlib import Path

import numpy as np

_MOVINGAI_PASSABLE = ".GS"  # ground, ground, swamp
_MOVINGAI_BLOCKED = "@OTW"  # out of bounds, out of bounds, trees, water
MAX_MAP_CELLS = 1 << 24  # 4096 x 4096; the benchmark's largest maps are 1024 x 1024 (street maps)
MAX_PAIRS = 100_000  # start/goal pairs per .scen (the benchmark's have a few thousand) or sampled by --num-pairs
MAX_LINE = 4096  # characters in a header or .scen line
_ROW_SLACK = 1 << 16  # bytes of trailing blank lines after the rows; more is more rows than the header says


def _open(path):
    try:
        return open(path, "rb")
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None


def _text(path, line_no, raw):
    """One line (or several) of a MovingAI file as text; a binary byte is an error naming its line."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as err:
        line = line_no + raw[: err.start].count(b"\n")
        raise ValueError(f"{path}:{line}: not a text file (byte 0x{raw[err.start]:02x})") from None


def _read_line(path, file, line_no):
    raw = file.readline(MAX_LINE + 1)
    if len(raw) > MAX_LINE:
        raise ValueError(f"{path}:{line_no}: line longer than {MAX_LINE} characters")
    return _text(path, line_no, raw)


def _map_size(path, header, lines):
    """The header's height and width, each at least 1 and together at most MAX_MAP_CELLS cells."""
    sizes = {}
    for key in ("height", "width"):
        try:
            sizes[key] = int(header[key])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: header needs integer 'height' and 'width', got {header}") from None
        if sizes[key] < 1:
            raise ValueError(f"{path}:{lines[key]}: {key} must be at least 1, got {sizes[key]}")
    height, width = sizes["height"], sizes["width"]
    if height * width > MAX_MAP_CELLS:
        raise ValueError(f"{path}:{lines['height']}: height {height} x width {width} is more than the {MAX_MAP_CELLS} "
                         f"cells (4096x4096) a map may have")
    return height, width


def read_movingai_map(path):
    """A MovingAI .map file as a uint8 [H, W] grid (1 = wall)."""
    header, lines = {}, {}
    with _open(path) as file:
        for line_no in range(1, 17):  # type, height, width, map: a few lines at most
            line = _read_line(path, file, line_no)
            fields = line.split()
            if fields == ["map"] or not line:
                break
            if len(fields) != 2:
                raise ValueError(f"{path}:{line_no}: malformed header line {line.rstrip()!r}")
            header[fields[0]], lines[fields[0]] = fields[1], line_no
        if fields != ["map"]:
            raise ValueError(f"{path}: no 'map' line")
        height, width = _map_size(path, header, lines)
        first_row = line_no + 1
        # row by row, so that a declared size the file does not have is never allocated
        rows = []
        for row_no in range(first_row, first_row + height):
            raw = file.readline(width + MAX_LINE)
            if not raw:
                break
            rows.append(_text(path, row_no, raw).rstrip())
        rest = file.read(_ROW_SLACK + 1)
    while rows and not rows[-1]:
        rows.pop()  # tolerate trailing blank lines
    if len(rows) != height:
        raise ValueError(f"{path}: {len(rows)} rows after 'map' (line {line_no}), the header says height {height}")
    if rest.strip() or len(rest) > _ROW_SLACK:
        raise ValueError(f"{path}: more than {height} rows after 'map' (line {line_no})")
    for row_no, row in enumerate(rows, start=first_row):
        if len(row) != width:
            raise ValueError(f"{path}:{row_no}: a row of {len(row)} cells, the header says width {width}")
        unknown = set(row) - set(_MOVINGAI_PASSABLE + _MOVINGAI_BLOCKED)
        if unknown:
            raise ValueError(f"{path}:{row_no}: unknown terrain character {min(unknown)!r}; "
                             f"use {_MOVINGAI_PASSABLE} (passable) or {_MOVINGAI_BLOCKED} (blocked)")
    cells = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8).reshape(height, width)
    return np.isin(cells, np.frombuffer(_MOVINGAI_BLOCKED.encode("ascii"), dtype=np.uint8)).astype(np.uint8)


def _scen_pair(path, line_no, line):
    """(start_y, start_x, goal_y, goal_x) of one .scen line, each inside the map the line names."""
    # bucket map width height start_x start_y goal_x goal_y optimal_length; split from the right
    fields = line.rsplit(None, 7)
    try:
        width, height, start_x, start_y, goal_x, goal_y = (int(f) for f in fields[1:7])
        float(fields[7])
    except (ValueError, IndexError):
        raise ValueError(f"{path}:{line_no}: malformed scenario line {line.rstrip()!r}") from None
    if len(fields[0].split()) < 2:
        raise ValueError(f"{path}:{line_no}: malformed scenario line {line.rstrip()!r}")
    if not (width >= 1 and height >= 1 and width * height <= MAX_MAP_CELLS):
        raise ValueError(f"{path}:{line_no}: map width {width} x height {height} is not a map size (1 to {MAX_MAP_CELLS} cells)")
    for name, x, y in (("start", start_x, start_y), ("goal", goal_x, goal_y)):
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"{path}:{line_no}: {name} ({x}, {y}) is outside the {width}x{height} map the line names")
    return start_y, start_x, goal_y, goal_x  # x is the column, y the row


def read_movingai_scen(path):
    """Start and goal (row, col) int64 [M, 2] arrays from a MovingAI .scen file."""
    coords = []
    with _open(path) as file:
        if _read_line(path, file, 1).split()[:1] != ["version"]:
            raise ValueError(f"{path}: first line must be 'version ...'")
        for line_no in itertools.count(2):
            line = _read_line(path, file, line_no)
            if not line:
                break
            if not line.strip():
                continue
            if len(coords) == MAX_PAIRS:
                raise ValueError(f"{path}:{line_no}: more than {MAX_PAIRS} start/goal pairs; split the file")
            coords.append(_scen_pair(path, line_no, line))
    if not coords:  # also a file of \r line breaks: all of it is the version line
        raise ValueError(f"{path}: no start/goal pairs after the 'version' line; add lines "
                         f"'bucket map width height start_x start_y goal_x goal_y optimal_length', one per pair")
    coords = np.array(coords, dtype=np.int64).reshape(-1, 4)
    return coords[:, :2], coords[:, 2:]


def read_map_folder(folder):
    """Every MovingAI .map file in a folder as a uint8 grid (1 = wall), in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"maps folder '{folder}' does not exist")
    paths = sorted(folder.glob("*.map"))
    if not paths:
        raise ValueError(f"maps folder '{folder}' has no .map files")
    return [read_movingai_map(path) for path in paths]
