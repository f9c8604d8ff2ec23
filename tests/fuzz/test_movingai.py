"""nav: a user's MovingAI benchmark files (`kiln eval --map/--scen` through evaluate_map's read_map_pairs, and the
.map files of a `maps:` folder through read_map_folder). Each example is a valid small .map (octile, 4x5, every
terrain character) and .scen (two pairs on it) with one file made hostile: random bytes, a truncation, byte flips, a
header number replaced (0, negative, 10**12, text, 5000 digits), header lines dropped or repeated, rows too short,
too long, missing or extra, an unknown terrain character, a .scen field replaced, dropped or added, bytes that are
not ASCII, other line breaks, blank lines. The read either gives a grid of the declared height x width whose walls
are the file's, with start/goal pairs inside the map their lines name, or refuses in one line naming the file
(KilnError from read_map_pairs, ValueError from the readers); never a MemoryError or an allocation of a declared
size the file does not have."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.recipes.nav.evaluation import label_map_pairs, no_pairs_message, read_map_pairs
from kiln.recipes.nav.movingai import MAX_MAP_CELLS, read_map_folder

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

MAP = "type octile\nheight 4\nwidth 5\nmap\n.@..T\n..G.W\nS.@..\n.O...\n"
SCEN = "version 1\n0\tfuzz.map\t5\t4\t0\t0\t4\t3\t7.0\n1\tfuzz.map\t5\t4\t3\t0\t0\t3\t5.41\n"
STARTS, GOALS = [[0, 0], [0, 3]], [[3, 4], [3, 0]]  # (row, col) = (y, x)
WALLS = "@OTW"
PEAK_BYTES = 1 << 20  # the files are a few hundred bytes; a declared 4096 x 4096 map would be 16 MiB

hostile_numbers = st.one_of(
    st.sampled_from(["0", "-1", "-5", str(10**12), "4096", "16777216", "16777217", "two", "", "4.0", "+4", "4_0", "0x4",
                     "1e3", "nan", "9" * 4000, "9" * 5000, "\xa04", "٤"]),
    st.integers(-10**12, 10**12).map(str), st.text("0123456789-+. x", max_size=8))


def mutate_common(draw, raw: bytes, kind: str) -> bytes:
    """The damage any file can take: random bytes, a truncation, byte flips, non-ASCII bytes, other line breaks."""
    if kind in BYTE_DAMAGE:
        return damage_bytes(draw, raw, kind)
    raw = bytearray(raw)
    if kind == "utf8":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(raw)))
            raw[at:at] = draw(st.sampled_from([b"\xff", b"\x80", b"\xc3\xa9", b"\xef\xbb\xbf", b"\x00", b"\x1a"]))
    elif kind == "breaks":
        sep = draw(st.sampled_from([b"\r\n", b"\r", b"\x0c", b"\n\n", b"\n \n", b"\t\n"]))
        raw = bytearray(bytes(raw).replace(b"\n", sep, draw(st.integers(1, 12))))
    elif kind == "blank":  # blank lines at the end (tolerated) or anywhere
        at = draw(st.sampled_from([len(raw), draw(st.integers(0, len(raw)))]))
        raw[at:at] = b"\n" * draw(st.sampled_from([1, 3, 70_000]))
    return bytes(raw)


def damage_map(draw, raw: bytes) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "utf8", "breaks", "blank", "header", "header", "header lines",
                                 "rows", "rows", "terrain", "none"]))
    lines = raw.decode().split("\n")
    if kind == "header":  # height or width (or both) replaced
        for index in draw(st.lists(st.sampled_from([1, 2]), min_size=1, max_size=2, unique=True)):
            lines[index] = lines[index].split()[0] + " " + draw(hostile_numbers)
    elif kind == "header lines":
        index = draw(st.integers(0, 3))
        change = draw(st.sampled_from(["drop", "repeat", "swap", "words"]))
        if change == "drop":
            del lines[index]
        elif change == "repeat":
            lines.insert(index, lines[index] if index != 1 else "height 9")
        elif change == "swap":
            lines[index], lines[(index + 1) % 4] = lines[(index + 1) % 4], lines[index]
        else:
            lines[index] += " " + draw(st.sampled_from(["extra", "4", "map"]))
    elif kind == "rows":
        index = draw(st.integers(4, 7))
        change = draw(st.sampled_from(["short", "long", "drop", "extra", "very long"]))
        if change == "short":
            lines[index] = lines[index][:draw(st.integers(0, 4))]
        elif change == "long":
            lines[index] += draw(st.text(".@", min_size=1, max_size=3))
        elif change == "drop":
            del lines[index]
        elif change == "extra":
            lines.insert(index, draw(st.sampled_from(["....", ".....", "@@@@@"])))
        else:
            lines[index] += "." * 10_000
    elif kind == "terrain":
        index, column = draw(st.integers(4, 7)), draw(st.integers(0, 4))
        char = draw(st.sampled_from(list("x#?E ,\t") + ["\x7f", "\x01", "é"]))
        lines[index] = lines[index][:column] + char + lines[index][column + 1:]
    if kind in ("header", "header lines", "rows", "terrain"):
        return "\n".join(lines).encode(), kind
    return mutate_common(draw, raw, kind), kind


def damage_scen(draw, raw: bytes) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "utf8", "breaks", "blank", "field", "field", "fields",
                                 "version", "long line", "none"]))
    lines = raw.decode().split("\n")
    if kind == "field":  # width, height, a coordinate or the length of one pair
        index = draw(st.integers(1, 2))
        fields = lines[index].split("\t")
        fields[draw(st.integers(0, 8))] = draw(hostile_numbers)
        lines[index] = "\t".join(fields)
    elif kind == "fields":
        index = draw(st.integers(1, 2))
        fields = lines[index].split("\t")
        if draw(st.booleans()):
            del fields[draw(st.integers(0, 8))]
        else:
            fields.insert(draw(st.integers(0, 9)), draw(st.sampled_from(["1", "x", "my map.map"])))
        lines[index] = "\t".join(fields)
    elif kind == "version":
        lines[0] = draw(st.sampled_from(["", "version", "Version 1", "0\tfuzz.map\t5\t4\t0\t0\t4\t3\t7.0"]))
    elif kind == "long line":
        lines[1] = lines[1].replace("fuzz.map", "m" * draw(st.sampled_from([4000, 5000])) + ".map")
    if kind in ("field", "fields", "version", "long line"):
        return "\n".join(lines).encode(), kind
    return mutate_common(draw, raw, kind), kind


def declared_map(raw: bytes) -> tuple[int, int, int]:
    """Height, width (as the header says) and the walls of the rows after the 'map' line, of a map that was read."""
    lines = raw.decode("ascii").split("\n")
    header = lines[:[line.split() for line in lines].index(["map"])]
    sizes = dict(line.split() for line in header)
    height, width = int(sizes["height"]), int(sizes["width"])
    rows = lines[len(header) + 1:len(header) + 1 + height]
    return height, width, sum(row.count(wall) for row in rows for wall in WALLS)


def inside_their_maps(starts: np.ndarray, goals: np.ndarray) -> bool:
    """Every (row, col) is inside some map of at most MAX_MAP_CELLS cells."""
    cells = np.concatenate([starts, goals]).astype(object)  # no int64 overflow in the product
    return bool((cells >= 0).all()) and all((y + 1) * (x + 1) <= MAX_MAP_CELLS for y, x in cells)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template")
    (root / "fuzz.map").write_text(MAP)
    (root / "fuzz.map.scen").write_text(SCEN)
    return root


def reads_or_refuses(map_path: Path, scen_path: Path | None, damaged: Path | None):
    """The contract of read_map_pairs (and of evaluate_map up to the model): a grid of the declared shape and pairs
    inside their maps that label_map_pairs measures or excludes, or one line naming the damaged file."""
    tracemalloc.start()
    try:
        result = read_map_pairs(map_path, scen_path, num_pairs=20, seed=0)
    except KilnError as err:
        result = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, peak  # read or refused, nothing the size of a declared map was allocated
    if isinstance(result, KilnError):
        assert one_line(result), repr(str(result))
        assert damaged is not None and str(damaged) in str(result), str(result)
        return None
    grid, starts, goals = result
    raw = map_path.read_bytes()
    height, width, walls = declared_map(raw)
    assert grid.dtype == np.uint8 and grid.shape == (height, width) and set(np.unique(grid)) <= {0, 1}
    assert int(grid.sum()) == walls
    if damaged != map_path:
        assert (grid == np.array([[c in WALLS for c in row] for row in MAP.split("\n")[4:8]])).all()
    assert starts.dtype == goals.dtype == np.int64 and starts.shape == goals.shape and starts.shape[1:] == (2,)
    if scen_path is None:
        assert len(starts) == 20 and not grid[starts[:, 0], starts[:, 1]].any() and not grid[goals[:, 0], goals[:, 1]].any()
    else:
        assert len(starts) <= scen_path.read_bytes().count(b"\n") and inside_their_maps(starts, goals)
        if damaged != scen_path:
            assert starts.tolist() == STARTS and goals.tolist() == GOALS
    pairs, counts = label_map_pairs(grid, starts, goals)
    assert counts["pairs"] + counts["excluded_off_map_or_blocked"] + counts["excluded_unreachable"] \
        + counts["excluded_start_is_goal"] == len(starts)
    assert len(pairs["starts"]) == counts["pairs"]
    if not counts["pairs"]:
        message = no_pairs_message(map_path, scen_path, grid.shape, starts, goals, counts)
        assert "\n" not in message and str(map_path) in message and not message.endswith(": "), message  # and says why
    return grid, starts, goals


@settings(max_examples=2000)
@given(st.data())
def test_a_map_and_scen_with_one_hostile_file_read_or_refuse_in_one_line(tmp_path_factory, template, data):
    work = tmp_path_factory.mktemp("fuzz")
    map_path, scen_path = work / "fuzz.map", work / "fuzz.map.scen"
    target = data.draw(st.sampled_from(["map", "map, no scen", "scen"]))
    map_raw, scen_raw, kind = MAP.encode(), SCEN.encode(), "none"
    if target == "scen":
        scen_raw, kind = damage_scen(data.draw, scen_raw)
    else:
        map_raw, kind = damage_map(data.draw, map_raw)
    note(f"{target}: {kind}: {(scen_raw if target == 'scen' else map_raw)[:400]!r}")
    map_path.write_bytes(map_raw)
    scen_path.write_bytes(scen_raw)
    damaged = None if kind == "none" else scen_path if target == "scen" else map_path
    event("read" if reads_or_refuses(map_path, None if target == "map, no scen" else scen_path, damaged) else "refused")


def test_the_untouched_map_and_scen_read(template):
    grid, starts, goals = reads_or_refuses(template / "fuzz.map", template / "fuzz.map.scen", None)
    assert grid.shape == (4, 5) and int(grid.sum()) == 5 and starts.tolist() == STARTS


@settings(max_examples=600)
@given(st.data())
def test_a_maps_folder_with_one_hostile_map_reads_or_names_it_in_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("maps")
    (folder / "a.map").write_text(MAP)
    raw, kind = damage_map(data.draw, MAP.encode())
    note(f"{kind}: {raw[:400]!r}")
    (folder / "b.map").write_bytes(raw)
    tracemalloc.start()
    try:
        grids = read_map_folder(folder)
    except ValueError as err:  # the readers' contract; kiln data nav makes it one KilnError line
        grids = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, peak
    if isinstance(grids, ValueError):
        assert one_line(grids) and str(folder / "b.map") in str(grids), repr(str(grids))
        event("refused")
        return
    event("read")
    height, width, walls = declared_map(raw)
    assert len(grids) == 2 and grids[1].shape == (height, width) and int(grids[1].sum()) == walls
