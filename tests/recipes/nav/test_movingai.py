"""Tests for kiln.recipes.nav.movingai: the MovingAI .map and .scen formats."""

import numpy as np
import pytest

from kiln.recipes.nav.movingai import read_movingai_map, read_movingai_scen


def test_read_movingai_map_and_scen(tmp_path):
    map_path = tmp_path / "tiny.map"
    map_path.write_text("type octile\nheight 3\nwidth 4\nmap\n.@G.\nT..S\n.OW.\n")
    grid = read_movingai_map(map_path)
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
    scen_path = tmp_path / "tiny.map.scen"
    scen_path.write_text("version 1\n0\ttiny.map\t4\t3\t0\t0\t3\t2\t5.0\n1\ttiny.map\t4\t3\t2\t0\t0\t2\t4.41\n")
    starts, goals = read_movingai_scen(scen_path)
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, [[0, 0], [0, 2]])  # (row, col) = (y, x)
    np.testing.assert_array_equal(goals, [[2, 3], [2, 0]])


@pytest.mark.parametrize(
    "text",
    [
        "type octile\nheight 3\nwidth 4\nmap\n....\n....\n",  # too few rows
        "type octile\nheight 2\nwidth 4\nmap\n....\n...\n",  # short row
        "type octile\nheight 1\nwidth 2\nmap\n.x\n",  # unknown terrain
        "type octile\nheight two\nwidth 2\nmap\n..\n..\n",  # non-integer height
        "type octile\nheight 1\nwidth 2\n..\n",  # no map line
    ],
)
def test_read_movingai_map_malformed(tmp_path, text):
    path = tmp_path / "bad.map"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.map"):
        read_movingai_map(path)


@pytest.mark.parametrize(
    "text",
    [
        "0\tm.map\t4\t3\t0\t0\t3\t2\t5.0\n",  # no version line
        "version 1\n0\tm.map\t4\t3\t0\tzero\t3\t2\t5.0\n",  # non-integer coordinate
        "version 1\n0\tm.map\t4\t3\t0\t0\t3\n",  # too few fields
    ],
)
def test_read_movingai_scen_malformed(tmp_path, text):
    path = tmp_path / "bad.scen"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.scen"):
        read_movingai_scen(path)


def test_a_huge_declared_size_is_refused_at_its_header_line_before_any_allocation(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.map"
    for header, message in [("height 1000000000\nwidth 1000000000", r"huge.map:2: height 1000000000 x width 1000000000"),
                            ("height 3000\nwidth 3000", r"huge.map: 2 rows after 'map' \(line 4\), the header says height 3000")]:
        path.write_text(f"type octile\n{header}\nmap\n..\n..\n")
        tracemalloc.start()
        with pytest.raises(ValueError, match=message):
            read_movingai_map(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20  # nothing the size of the declared map (9M cells) was allocated


def test_a_map_file_far_longer_than_its_header_says_is_not_read_whole(tmp_path):
    import tracemalloc

    path = tmp_path / "long.map"
    path.write_text("type octile\nheight 2\nwidth 2\nmap\n" + "..\n" * 2_000_000)  # 6 MB of rows
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"long.map: more than 2 rows after 'map' \(line 4\)"):
        read_movingai_map(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "data, message",
    [
        (b"type octile\nheight 0\nwidth 4\nmap\n", r"bad.map:2: height must be at least 1"),
        (b"type octile\nheight 1\nwidth -2\nmap\n", r"bad.map:3: width must be at least 1"),
        (b"type octile\nheight 1\nwidth 2\nmap\n.\xff\n", r"bad.map:5: not a text file \(byte 0xff\)"),
        (b"\x89PNG\r\n\x1a\n", r"bad.map:1: not a text file \(byte 0x89\)"),
        (b"type octile\nheight 1\nwidth\nmap\n..\n", r"bad.map:3: malformed header line 'width'"),
        (b"type octile\nheight 2\nwidth 2\nmap\n..\n.x\n", r"bad.map:6: unknown terrain character 'x'"),
    ],
)
def test_read_movingai_map_names_the_line(tmp_path, data, message):
    path = tmp_path / "bad.map"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_movingai_map(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("0\tm.map\t4\t3\t0\t99999999999999999999999\t3\t2\t5.0", r"bad.scen:2: start \(0, 99999999999999999999999\) is outside"),
        ("0\tm.map\t4\t3\t-1\t0\t3\t2\t5.0", r"bad.scen:2: start \(-1, 0\) is outside the 4x3 map"),
        ("0\tm.map\t4\t3\t0\t0\t4\t2\t5.0", r"bad.scen:2: goal \(4, 2\) is outside the 4x3 map"),
        ("0\tm.map\t0\t3\t0\t0\t0\t0\t5.0", r"bad.scen:2: map width 0 x height 3"),
        ("0\tm.map\t100000\t100000\t0\t0\t1\t1\t5.0", r"bad.scen:2: map width 100000 x height 100000"),
    ],
)
def test_read_movingai_scen_refuses_coordinates_outside_the_map_it_names(tmp_path, line, message):
    path = tmp_path / "bad.scen"
    path.write_text(f"version 1\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_movingai_scen(path)


def test_read_movingai_scen_bounds_the_pairs_and_the_line_length(tmp_path, monkeypatch):
    from kiln.recipes.nav import movingai

    monkeypatch.setattr(movingai, "MAX_PAIRS", 3)
    path = tmp_path / "many.scen"
    path.write_text("version 1\n" + "0\tm.map\t4\t3\t0\t0\t3\t2\t5.0\n" * 4)
    with pytest.raises(ValueError, match=r"many.scen:5: more than 3 start/goal pairs"):
        read_movingai_scen(path)
    path.write_text("version 1\n0\t" + "m" * 100_000 + ".map\t4\t3\t0\t0\t3\t2\t5.0\n")
    with pytest.raises(ValueError, match=r"many.scen:2: line longer than"):
        read_movingai_scen(path)


def test_an_unreadable_map_in_a_maps_folder_is_named(tmp_path):
    from kiln.recipes.nav.movingai import read_map_folder

    (tmp_path / "a.map").write_text("type octile\nheight 1\nwidth 2\nmap\n..\n")
    (tmp_path / "b.map").mkdir()  # a folder whose name ends in .map
    with pytest.raises(ValueError, match=r"b.map: cannot be read \(Is a directory\)"):
        read_map_folder(tmp_path)


@pytest.mark.parametrize("text", ["version 1\n", "version 1\n\n\n", "version 1\r0\tm.map\t4\t3\t0\t0\t3\t2\t5.0\r"])
def test_a_scen_without_pairs_is_refused_naming_it(tmp_path, text):
    """Found by tests/fuzz/test_movingai.py: a .scen of only its version line (truncated, or with \\r line breaks)
    read as zero pairs, and `kiln eval --scen` then said 'no start/goal pair ... can be measured' and no reason."""
    path = tmp_path / "empty.scen"
    path.write_bytes(text.encode())
    with pytest.raises(ValueError, match=r"empty.scen: no start/goal pairs after the 'version' line; add lines"):
        read_movingai_scen(path)
