"""World data: collection, shards read through memory maps as windows, augmentation, and the bad-input errors
(a damaged dataset directory is one line naming the file). The frames + actions import: test_recordings.py."""

from __future__ import annotations

import builtins
import json
import re
import shutil

import numpy as np
import pytest
import torch
from kiln.errors import KilnError
from kiln.recipes.world.data import WindowDataset, augment, load_data, read_info
from kiln.recipes.world.sim import TRACK_SEED_SPACE, require_gymnasium

from .conftest import TINY_COLLECT


def test_collection_drops_the_intro_splits_by_episode_and_holds_out_test_tracks(carracing_dir):
    info = read_info(carracing_dir)
    assert info["size"] == 32 and info["action_names"] == ["steer", "gas", "brake"] and info["frames_per_second"] > 0
    episodes = {split: info["splits"][split]["episodes"] for split in ("train", "val", "test")}
    assert [len(episodes[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    ids = [e["episode"] for s in episodes.values() for e in s]
    assert sorted(ids) == [0, 1, 2, 3]  # every episode in exactly one split
    assert all(e["track_seed"] >= TRACK_SEED_SPACE for e in episodes["test"])
    assert all(e["track_seed"] < TRACK_SEED_SPACE for s in ("train", "val") for e in episodes[s])
    frames = np.load(carracing_dir / "train" / "shard_00000.frames.npy")
    assert frames.dtype == np.uint8 and frames.shape == (2 * TINY_COLLECT.steps, 32, 32, 3)


def test_the_intro_frames_are_dropped_and_the_actions_kept_in_step():
    from kiln.recipes.world import sim
    from kiln.recipes.world.sim import rollout, track_seed

    job = {"env": "CarRacing-v3", "seed": 1, "episode": 0, "track_seed": track_seed(1, 0, False), "size": 32,
           "random_fraction": 0.0, "steer_noise": 0.3}  # road follower only: the intro drives the same way
    whole = rollout({**job, "intro_frames": 0, "steps": 6})
    sim._ENV.clear()  # a fresh Box2D world: one reused across resets keeps contact caches that change the physics slightly
    cut = rollout({**job, "intro_frames": 4, "steps": 2})
    np.testing.assert_array_equal(cut["frames"], whole["frames"][4:6])
    np.testing.assert_array_equal(cut["actions"], whole["actions"][4:6])


def test_windows_stay_inside_one_episode_and_come_from_memory_maps(carracing_dir):
    info = read_info(carracing_dir)
    data = WindowDataset(carracing_dir, "train", info, length=4, stride=1)
    assert len(data) == 2 * (TINY_COLLECT.steps - 4 + 1)
    frames = np.load(carracing_dir / "train" / "shard_00000.frames.npy")
    actions = np.load(carracing_dir / "train" / "shard_00000.actions.npy")
    batch = data.__getitems__([0, len(data) - 1])
    assert batch["frames"].shape == (2, 4, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    np.testing.assert_array_equal(batch["frames"][1].numpy(), frames[-4:])
    np.testing.assert_allclose(batch["actions"][0].numpy(), actions[:4])
    assert isinstance(data.arrays(0)[0], np.memmap)
    assert data.__getstate__()["_arrays"] is None  # DataLoader workers open their own maps


def test_frame_skip_keeps_every_kth_frame_and_averages_the_actions_it_spans(carracing_dir):
    info = read_info(carracing_dir)
    data = WindowDataset(carracing_dir, "val", info, length=3, stride=5, frame_skip=2)
    shard = info["splits"]["val"]["shards"][0]["name"]
    frames = np.load(carracing_dir / f"{shard}.frames.npy")
    actions = np.load(carracing_dir / f"{shard}.actions.npy")
    assert len(data) == len(range(0, TINY_COLLECT.steps - 6 + 1, 5))
    item = data[1]  # starts at frame 5
    np.testing.assert_array_equal(item["frames"].numpy(), frames[[5, 7, 9]])
    np.testing.assert_allclose(item["actions"].numpy(), actions[5:11].reshape(3, 2, 3).mean(1), rtol=1e-6)


def test_augmentation_draws_once_per_sequence():
    torch.manual_seed(0)
    still = torch.rand(6, 1, 3, 16, 16).expand(6, 5, 3, 16, 16)  # five identical frames per sequence
    out = augment(still, brightness=0.3, contrast=0.3, crop_scale=(0.5, 0.9))
    assert out.shape == still.shape and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, out[:, :1].expand_as(out))  # no fake motion inside a sequence
    assert (out[0] - still[0]).abs().mean() > 0.01  # but the sequence did change
    flat = torch.full((4, 2, 3, 8, 8), 0.5)
    brighter = augment(flat, brightness=0.2, contrast=0.0, crop_scale=(1.0, 1.0))
    factors = brighter[:, 0, 0, 0, 0] / 0.5
    assert ((factors >= 0.8 - 1e-6) & (factors <= 1.2 + 1e-6)).all() and factors.std() > 0


def test_missing_gymnasium_or_box2d_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_box2d(name, *args, **kwargs):
        if name == "Box2D":
            raise ImportError("No module named 'Box2D'", name="Box2D")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_box2d)
    with pytest.raises(KilnError, match=r"Box2D is missing.*pip install \"gymnasium\[box2d\]\""):
        require_gymnasium()


def test_a_directory_that_is_not_a_world_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(KilnError, match="kiln data world --env CarRacing-v3"):
        read_info(tmp_path)


def test_a_taken_out_is_refused_before_anything_is_collected(tmp_path, monkeypatch):
    from kiln.recipes.world import sim
    from kiln.recipes.world.data import collect_dataset

    def never(*args):
        raise AssertionError("collected into a taken --out")

    monkeypatch.setattr(sim, "collect", never)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(KilnError, match="exists and is not empty"):
        collect_dataset(tmp_path / "out", TINY_COLLECT, lambda message: None)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- a damaged dataset directory (issue 27)

SIDE_16 = {"latent_dim": 4, "context_frames": 2, "encoder": {"stages": [8, 8]}, "dynamics": {"num_layers": 1, "hidden_dim": 8},
           "decoder": {"stages": [8, 8], "init_size": 4}}


@pytest.fixture
def small_dataset(tmp_path):
    """A 16x16 dataset of five 14-frame episodes (3 train, 1 val, 1 test), imported from frames.npy + actions.npy."""
    from kiln.recipes.world.recordings import import_frames_dir

    rng = np.random.default_rng(3)
    source = tmp_path / "rec"
    for i in range(5):
        (source / f"ep{i}").mkdir(parents=True)
        np.save(source / f"ep{i}" / "frames.npy", rng.integers(0, 255, (14, 16, 16, 3), dtype=np.uint8))
        np.save(source / f"ep{i}" / "actions.npy", rng.normal(size=(14, 2)).astype(np.float32))
    import_frames_dir(source, tmp_path / "data", size=16, val_episodes=1, test_episodes=1, shard_frames=256, seed=0,
                      log=lambda message: None)
    return tmp_path / "data"


def load(data_dir):
    from kiln.recipes.world.config import WorldConfig

    cfg = WorldConfig.model_validate({"data": {"dir": str(data_dir), "generate": None, "eval_stride": 1}, "model": SIDE_16})
    return load_data(cfg, log=lambda message: None)


def refused(data_dir, pattern):
    with pytest.raises(KilnError, match=pattern) as caught:
        load(data_dir)
    assert "\n" not in str(caught.value)


def test_the_small_dataset_loads(small_dataset):
    splits = load(small_dataset)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3 * 12, 14 - 12 + 1, 14 - 12 + 1)


def test_a_split_missing_from_dataset_json_is_named(small_dataset):
    info = json.loads((small_dataset / "dataset.json").read_text())
    del info["splits"]["val"]
    (small_dataset / "dataset.json").write_text(json.dumps(info))
    refused(small_dataset, re.escape(f"'{small_dataset / 'dataset.json'}': splits.val: Field required"))


def test_a_deleted_split_directory_names_the_missing_shard(small_dataset):
    shutil.rmtree(small_dataset / "test")
    refused(small_dataset, re.escape(f"'{small_dataset / 'test' / 'shard_00000.frames.npy'}' is missing"))


def test_a_truncated_frames_shard_is_named(small_dataset):
    path = small_dataset / "train" / "shard_00000.frames.npy"
    path.write_bytes(path.read_bytes()[:1000])
    refused(small_dataset, re.escape(f"'{path}' is truncated"))


def test_an_actions_shard_shorter_than_its_frames_is_named(small_dataset):
    path = small_dataset / "train" / "shard_00000.actions.npy"
    np.save(path, np.load(path)[:10])
    refused(small_dataset, re.escape(f"'{path}' holds 10 actions, but dataset.json gives the shard 42 frames"))
