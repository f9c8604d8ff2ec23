"""MovingAI benchmark files (https://movingai.com/benchmarks/formats.html): .map grids and .scen start/goal pairs."""

from pathlib import Path

import numpy as np

_MOVINGAI_PASSABLE = ".GS"  # ground, ground, swamp
_MOVINGAI_BLOCKED = "@OTW"  # out of bounds, out of bounds, trees, water


def read_movingai_map(path):
    """A MovingAI .map file as a uint8 [H, W] grid (1 = wall)."""
    lines = Path(path).read_text().splitlines()
    header = {}
    for line_no, line in enumerate(lines):
        fields = line.split()
        if fields == ["map"]:
            break
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_no + 1}: malformed header line {line!r}")
        header[fields[0]] = fields[1]
    else:
        raise ValueError(f"{path}: no 'map' line")
    try:
        height, width = int(header["height"]), int(header["width"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: header needs integer 'height' and 'width', got {header}") from None
    rows = [row.rstrip() for row in lines[line_no + 1 :]]
    while rows and not rows[-1]:
        rows.pop()  # tolerate trailing blank lines
    if len(rows) != height or any(len(row) != width for row in rows):
        raise ValueError(f"{path}: expected {height} rows of width {width} after 'map'")
    cells = np.array([list(row) for row in rows]).reshape(height, width)
    unknown = set(np.unique(cells)) - set(_MOVINGAI_PASSABLE + _MOVINGAI_BLOCKED)
    if unknown:
        raise ValueError(f"{path}: unknown terrain characters {sorted(unknown)}")
    return np.isin(cells, list(_MOVINGAI_BLOCKED)).astype(np.uint8)


def read_movingai_scen(path):
    """Start and goal (row, col) int64 [M, 2] arrays from a MovingAI .scen file."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].split()[:1] != ["version"]:
        raise ValueError(f"{path}: first line must be 'version ...'")
    coords = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        # bucket map width height start_x start_y goal_x goal_y optimal_length; split from the right
        fields = line.rsplit(None, 7)
        try:
            _width, _height, start_x, start_y, goal_x, goal_y = (int(f) for f in fields[1:7])
            float(fields[7])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{line_no}: malformed scenario line {line!r}") from None
        if len(fields[0].split()) < 2:
            raise ValueError(f"{path}:{line_no}: malformed scenario line {line!r}")
        coords.append((start_y, start_x, goal_y, goal_x))  # x is the column, y the row
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
