"""The generic frames + actions import (`kiln data world --frames-dir`): what it writes, and the malformed recordings
it refuses in one line that names the file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from kiln.errors import KilnError
from kiln.recipes.world.data import read_info
from kiln.recipes.world.recordings import import_frames_dir


def write_episode(root, name, frames, actions, as_npy=False):
    episode = root / name
    (episode / "frames").mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(episode / "frames" / f"{t:05d}.png")
    if as_npy:
        np.save(episode / "actions.npy", actions)
    else:
        header = "throttle,steer"
        np.savetxt(episode / "actions.csv", actions, delimiter=",", header=header, comments="")
    return episode


def import_into(source, out, size=16):
    return import_frames_dir(source, out, size=size, val_episodes=1, test_episodes=1, shard_frames=256, seed=0, log=lambda message: None)


def test_generic_frames_and_actions_directories_import(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "carla"
    for i in range(4):
        write_episode(source, f"town{i}", rng.integers(0, 255, (12, 20, 20, 3), dtype=np.uint8), rng.normal(size=(12, 2)))
    (source / "splits.json").write_text(json.dumps({"val": ["town1"], "test": ["town3"]}))
    info = import_frames_dir(source, tmp_path / "out", size=16, val_episodes=1, test_episodes=1, shard_frames=256, seed=0,
                             log=lambda message: None)
    assert info["action_names"] == ["throttle", "steer"] and info["action_dim"] == 2
    assert [e["name"] for e in info["splits"]["test"]["episodes"]] == ["town3"]
    frames = np.load(tmp_path / "out" / "train" / "shard_00000.frames.npy")
    assert frames.shape == (24, 16, 16, 3)
    expected = np.asarray(Image.open(source / "town0" / "frames" / "00003.png").resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(frames[3], expected)
    actions = np.load(tmp_path / "out" / "train" / "shard_00000.actions.npy")
    np.testing.assert_allclose(actions[:12], np.loadtxt(source / "town0" / "actions.csv", delimiter=",", skiprows=1), rtol=1e-6)


def test_an_episode_with_a_mismatched_action_count_is_named(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "rec"
    for i, count in enumerate([10, 10, 9, 10]):
        write_episode(source, f"ep{i}", rng.integers(0, 255, (10, 8, 8, 3), dtype=np.uint8), rng.normal(size=(count, 3)), as_npy=True)
    with pytest.raises(KilnError, match="episode 'ep2' has 10 frames but 9 actions"):
        import_frames_dir(source, tmp_path / "out", size=8, val_episodes=1, test_episodes=1, shard_frames=256, seed=0,
                          log=lambda message: None)
    assert not (tmp_path / "out").exists()


def test_collection_flags_with_frames_dir_are_an_error(tmp_path):
    from kiln.cli import build_parser
    from kiln.recipes.world import RECIPE

    source = tmp_path / "rec"
    for i in range(4):
        write_episode(source, f"ep{i}", np.zeros((6, 8, 8, 3), np.uint8), np.zeros((6, 2)), as_npy=True)
    out = tmp_path / "out"
    args = build_parser().parse_args(["data", "world", "--frames-dir", str(source), "--episodes", "40", "--workers", "4",
                                      "--size", "8", "--out", str(out)])
    with pytest.raises(KilnError, match=r"^--episodes, --workers only apply to collecting CarRacing rollouts, not to --frames-dir"):
        RECIPE.make_data(args)
    assert not out.exists()
    RECIPE.make_data(build_parser().parse_args(["data", "world", "--frames-dir", str(source), "--size", "8", "--val-episodes", "1",
                                                "--test-episodes", "1", "--out", str(out)]))
    assert read_info(out)["size"] == 8 and len(read_info(out)["splits"]["train"]["episodes"]) == 2


# ----------------------------------------------------------------------------- malformed recordings (issue 27)


@pytest.fixture
def recordings(tmp_path):
    """Three good 16x16 episodes of 6 frames; a test adds a fourth, broken one."""
    rng = np.random.default_rng(2)
    source = tmp_path / "rec"
    for i in range(3):
        write_episode(source, f"ep{i}", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), rng.normal(size=(6, 2)))
    return source


def refused(source, out, pattern):
    with pytest.raises(KilnError, match=pattern) as caught:
        import_into(source, out)
    assert "\n" not in str(caught.value)
    assert not out.exists()


def good_episode(source, name="ep3", frames=6):
    return write_episode(source, name, np.full((frames, 16, 16, 3), 90, np.uint8), np.zeros((frames, 2)))


def test_a_missing_actions_csv_names_the_episode_directory(recordings, tmp_path):
    (good_episode(recordings) / "actions.csv").unlink()
    refused(recordings, tmp_path / "out", re.escape(f"'{recordings / 'ep3'}' has no actions.csv"))


def test_non_numeric_actions_name_the_file_line_and_column(recordings, tmp_path):
    csv = good_episode(recordings) / "actions.csv"
    csv.write_text("throttle,steer\n0.1,0.2\n0.1,fast\n" + "0,0\n" * 4)
    refused(recordings, tmp_path / "out", re.escape(f"'{csv}' line 3, column 'steer': 'fast' is not a number"))


def test_an_unreadable_png_is_named(recordings, tmp_path):
    png = good_episode(recordings) / "frames" / "00002.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    refused(recordings, tmp_path / "out", re.escape(f"'{png}' is not a readable image"))


def test_a_truncated_png_is_named(recordings, tmp_path):
    png = good_episode(recordings) / "frames" / "00004.png"
    png.write_bytes(png.read_bytes()[:60])
    refused(recordings, tmp_path / "out", re.escape(f"'{png}' is not a readable image"))


def test_frames_of_mixed_sizes_name_the_first_odd_frame(recordings, tmp_path):
    episode = good_episode(recordings)
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(episode / "frames" / "00003.png")
    refused(recordings, tmp_path / "out",
            re.escape(f"'{episode / 'frames' / '00003.png'}' is 20x12 but the episode's first frame is 16x16"))


def test_an_episode_shorter_than_a_window_is_named(recordings, tmp_path):
    episode = good_episode(recordings, frames=1)
    refused(recordings, tmp_path / "out", re.escape(f"'{episode}' has 1 frame"))


def test_kiln_data_world_on_a_broken_recording_exits_2_with_one_line(recordings, tmp_path, capsys):
    from kiln.cli import main

    png = good_episode(recordings) / "frames" / "00001.png"
    png.write_bytes(b"garbage")
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["data", "world", "--frames-dir", str(recordings), "--size", "16", "--val-episodes", "1", "--test-episodes", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: '{png}'") and len(err.strip().splitlines()) == 1
    assert not out.exists()
