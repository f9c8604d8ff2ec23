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
