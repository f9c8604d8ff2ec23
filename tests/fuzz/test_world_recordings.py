"""world: a user's recordings for `kiln data world --frames-dir` (PNG frames or frames.npy, actions.csv or actions.npy,
splits.json). Each example is a valid tiny recording (four 16x16 episodes of 4 frames) with one file made hostile:
random bytes, a truncation or byte flips of the valid file, a valid file with one value made hostile, or none at all.
The import either writes a dataset that reads back, or refuses in one line naming a file of the recording and
writes nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from PIL import Image

from kiln.errors import KilnError
from kiln.recipes.world.data import WindowDataset, read_info
from kiln.recipes.world.recordings import import_frames_dir

from .conftest import BYTE_DAMAGE, damage_bytes, one_line

SIDE, FRAMES = 16, 4
CSV = "ep0/actions.csv"
PNG = "ep1/frames/00002.png"
FRAMES_NPY, ACTIONS_NPY = "ep3/frames.npy", "ep3/actions.npy"
TARGETS = [CSV, PNG, FRAMES_NPY, ACTIONS_NPY, "splits.json", "ep2/frames"]


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """Durable writes are the engine's tests' subject; here an fsync per file would be most of an example's time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def write_recording(root: Path) -> Path:
    """ep0-ep2: PNG frames + actions.csv; ep3: frames.npy + actions.npy; splits.json names ep1 val and ep2 test."""
    rng = np.random.default_rng(0)
    for i in range(4):
        episode = root / f"ep{i}"
        episode.mkdir(parents=True)
        frames, actions = rng.integers(0, 255, (FRAMES, SIDE, SIDE, 3), dtype=np.uint8), rng.normal(size=(FRAMES, 2))
        if i == 3:
            np.save(episode / "frames.npy", frames)
            np.save(episode / "actions.npy", actions.astype(np.float32))
            continue
        (episode / "frames").mkdir()
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(episode / "frames" / f"{t:05d}.png")
        (episode / "actions.csv").write_text("steer,gas\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in actions))
    (root / "splits.json").write_text(json.dumps({"val": ["ep1"], "test": ["ep2"]}))
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return write_recording(tmp_path_factory.mktemp("template") / "rec")


# ----------------------------------------------------------------------------- hostile contents, per kind of file

hostile_cells = st.one_of(st.sampled_from(["", "nan", "inf", "-inf", "1e39", "-1e400", "x", "0x10", '"', "1,2", "True", "1" * 400]),
                          st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def hostile_csv(draw) -> bytes:
    rows = [["steer", "gas"]] + [["0.1", "-0.2"] for _ in range(draw(st.integers(0, 6)))]
    change = draw(st.sampled_from(["cell", "short row", "long row", "no header", "header cell", "blank line"]))
    if change == "cell" and len(rows) > 1:
        rows[draw(st.integers(1, len(rows) - 1))][draw(st.integers(0, 1))] = draw(hostile_cells)
    elif change == "short row":
        rows[draw(st.integers(0, len(rows) - 1))].pop()
    elif change == "long row":
        rows[draw(st.integers(0, len(rows) - 1))].append(draw(hostile_cells))
    elif change == "no header":
        rows = rows[1:]
    elif change == "header cell":
        rows[0][draw(st.integers(0, 1))] = draw(hostile_cells)
    else:
        rows.insert(draw(st.integers(1, len(rows))), [])
    return "".join(",".join(row) + "\n" for row in rows).encode()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (checksummed) header claims width x height, with one byte of image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


@st.composite
def hostile_png(draw) -> bytes:
    if draw(st.booleans()):
        return png_claiming(draw(st.sampled_from([0, 1, 2**31 - 1, 10**5, 9000])), draw(st.sampled_from([0, 1, 10**5, 9000])))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P", "1", "I;16"]))
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=draw(st.sampled_from(["PNG", "BMP", "GIF", "TIFF"])) if mode != "I;16" else "PNG")
    return buffer.getvalue()  # another size, mode, or format under the .png name


@st.composite
def hostile_array(draw, frames: bool) -> bytes:
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int64, np.bool_, np.complex64, "U2", object]))
    t = draw(st.integers(0, 6))
    shape = draw(st.sampled_from([(t, SIDE, SIDE, 3), (t, SIDE, SIDE), (t, 0, SIDE, 3), (t, 5, 9, 3), (t, SIDE, SIDE, 4)] if frames
                                 else [(t, 2), (t,), (t, 0), (t, 3), (t, 2, 1), (t, 300)]))
    array = np.zeros(shape, dtype)
    if not frames and array.size and np.dtype(dtype).kind == "f":
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -3e38]))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


names = st.sampled_from(["ep0", "ep1", "ep2", "ep3", "ep9", ""])
hostile_splits = st.one_of(
    st.dictionaries(st.sampled_from(["train", "val", "test", "other"]), st.one_of(st.lists(names, max_size=3), names, st.integers()),
                    max_size=3),
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=4)), lambda inner: st.lists(inner, max_size=2), max_leaves=4),
).map(lambda value: json.dumps(value).encode())
DEEP_OR_HUGE = [b"[" * 100_000, b'{"val": [' + b"1" * 5000 + b"]}"]  # beyond the JSON parser's recursion, beyond int digits


def hostile(draw, target: str):
    if target == CSV:
        return draw(hostile_csv())
    if target == PNG:
        return draw(hostile_png())
    if target in (FRAMES_NPY, ACTIONS_NPY):
        return draw(hostile_array(target == FRAMES_NPY))
    return draw(st.one_of(hostile_splits, st.sampled_from(DEEP_OR_HUGE)))


def damage(draw, root: Path) -> str:
    """Make one file of the recording at `root` hostile; returns what was done."""
    target = draw(st.sampled_from(TARGETS))
    path = root / target
    if target == "ep2/frames":  # the structure: an episode too short, without frames, or without actions
        change = draw(st.sampled_from(["one frame", "no frames", "no actions", "extra frame"]))
        files = sorted(path.iterdir())
        if change == "one frame":
            for file in files[1:]:
                file.unlink()
        elif change == "no frames":
            shutil.rmtree(path)
        elif change == "no actions":
            (root / "ep2" / "actions.csv").unlink()
        else:
            shutil.copy(files[0], path / "99999.png")
        return f"{target}: {change}"
    raw = bytearray(path.read_bytes())
    kind = draw(st.sampled_from(["random", "truncate", "flip", "hostile", "hostile", "none"]))
    if kind in BYTE_DAMAGE:
        raw = bytearray(damage_bytes(draw, bytes(raw), kind))
    elif kind == "hostile":
        raw = bytearray(hostile(draw, target))
    path.write_bytes(bytes(raw))
    return f"{target}: {kind}"


def imports_or_refuses(source: Path, out: Path) -> dict | None:
    """The contract: a dataset that reads back, or one line naming a file of the recording and nothing written."""
    try:
        info = import_frames_dir(source, out, size=SIDE, val_episodes=1, test_episodes=1, shard_frames=256, seed=0,
                                 log=lambda message: None)
    except KilnError as err:
        assert one_line(err), repr(str(err))
        assert str(source) in str(err), str(err)
        assert not out.exists()
        return None
    assert read_info(out) == info
    for split in ("train", "val", "test"):
        windows = WindowDataset(out, split, info, length=2)
        batch = windows.__getitems__(list(range(len(windows))))
        assert batch["frames"].shape[1:] == (2, SIDE, SIDE, 3) and bool(batch["actions"].isfinite().all())
    return info


@settings(max_examples=300)
@given(st.data())
def test_a_recording_with_one_hostile_file(tmp_path_factory, template, data):
    work = tmp_path_factory.mktemp("fuzz")
    source = work / "rec"
    shutil.copytree(template, source)
    note(damage(data.draw, source))
    imports_or_refuses(source, work / "out")


def test_the_untouched_recording_imports(tmp_path, template):
    info = imports_or_refuses(template, tmp_path / "out")
    assert info["action_names"] == ["steer", "gas"] and info["splits"]["test"]["episodes"][0]["name"] == "ep2"


@settings(max_examples=50)
@given(st.data())
def test_kiln_data_world_frames_dir_exits_2_with_one_line_or_writes_a_dataset(tmp_path_factory, capsys, template, data):
    from kiln.cli import main

    work = tmp_path_factory.mktemp("cli")
    source, out = work / "rec", work / "out"
    shutil.copytree(template, source)
    note(damage(data.draw, source))
    capsys.readouterr()
    code = main(["data", "world", "--frames-dir", str(source), "--size", str(SIDE), "--out", str(out)])
    err = capsys.readouterr().err
    if code == 0:
        assert read_info(out)["size"] == SIDE
        return
    assert code == 2 and err.startswith("kiln: error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
