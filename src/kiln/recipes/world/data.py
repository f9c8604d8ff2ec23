"""World-model datasets: uint8 frames + actions + episode ids in memory-mapped shards, read as windows.

A dataset directory (what `kiln data world` writes):

    dataset.json                  size, action_dim, action_names, per split its shards and episodes, provenance
    train/shard_00000.frames.npy  uint8 [N, size, size, 3]
    train/shard_00000.actions.npy float32 [N, action_dim]  (a_t: the action applied at frame t)
    train/shard_00000.episodes.npy int32 [N]               (episode id of every frame)
    val/...  test/...

Episodes never cross a shard, so a window (consecutive frames of one episode) is a slice of one shard.
Shards are opened with np.load(mmap_mode="r") lazily in whichever process reads them (DataLoader
workers included): only the frames of a batch are read from disk, never a whole split.

Users bring their own recordings (CARLA, nuScenes, a game) in the generic frames + actions layout,
converted by `kiln data world --frames-dir DIR --out OUT`:

    DIR/<episode>/frames/*.png|jpg   one image per frame, in file-name order (or frames.npy: uint8 [T, H, W, 3])
    DIR/<episode>/actions.csv        one row per frame, a header naming the action columns (or actions.npy [T, A])
    DIR/splits.json                  optional: {"val": [episode names], "test": [episode names]}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kiln.engine.files import dataset_dir, write_json
from kiln.engine.task import Splits
from kiln.errors import KilnError
from kiln.recipes import dataset_info

FORMAT = "kiln-world-frames/1"
SPLITS = ("train", "val", "test")
CARRACING_ACTIONS = ["steer", "gas", "brake"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# ----------------------------------------------------------------------------- writing


def write_dataset(out: Path, episodes: list[dict[str, Any]], info: dict[str, Any], shard_frames: int) -> dict[str, Any]:
    """Episodes (frames uint8 [T, S, S, 3], actions [T, A], split) -> shards and dataset.json in `out` (inside a
    dataset_dir block, which renames the whole directory into place). Returns the dataset.json."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        (out / split).mkdir(parents=True)
        members = [e for e in episodes if e["split"] == split]
        if not members:
            raise KilnError(f"the {split} split has no episodes; collect more episodes or name some in splits.json")
        shards, pending = [], []
        for episode in members + [None]:
            if episode is None or (pending and sum(len(e["frames"]) for e in pending) + len(episode["frames"]) > shard_frames):
                name = f"{split}/shard_{len(shards):05d}"
                np.save(out / f"{name}.frames.npy", np.concatenate([e["frames"] for e in pending]))
                np.save(out / f"{name}.actions.npy", np.concatenate([e["actions"] for e in pending]).astype(np.float32))
                np.save(out / f"{name}.episodes.npy", np.concatenate([np.full(len(e["frames"]), e["episode"], np.int32) for e in pending]))
                shards.append({"name": name, "frames": sum(len(e["frames"]) for e in pending)})
                pending = []
            if episode is not None:
                pending.append(episode)
        splits[split] = {"shards": shards, "frames": sum(s["frames"] for s in shards),
                         "episodes": [{k: e[k] for k in e if k not in ("frames", "actions", "split")} | {"frames": len(e["frames"])}
                                      for e in members]}
    info = {"format": FORMAT, **info, "splits": splits}
    write_json(out / "dataset.json", info)
    return info


def collect_dataset(out: Path, settings, log: Callable[[str], None]) -> dict[str, Any]:
    """`kiln data world --env ...`: simulator rollouts -> a dataset directory."""
    from kiln.recipes.world.sim import collect

    with dataset_dir(out) as tmp:  # a taken --out is refused before the (long) collection
        episodes, stats = collect(settings, log)
        info = {"source": settings.env, "size": settings.size, "action_dim": 3, "action_names": CARRACING_ACTIONS,
                "collect": settings.model_dump(), **stats,
                "split_rule": "by episode; test episodes drive track seeds from a range train and val never use"}
        info = write_dataset(tmp, episodes, info, settings.shard_frames)
    log(f"Wrote {out}: " + ", ".join(f"{s} {len(info['splits'][s]['episodes'])} episodes / {info['splits'][s]['frames']:,} frames"
                                     for s in SPLITS))
    return info


def read_episode(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One episode of the generic layout -> (frames uint8 [T, size, size, 3], actions float32 [T, A], action names)."""
    from PIL import Image

    if (path / "frames.npy").is_file():
        raw = np.load(path / "frames.npy", mmap_mode="r")
        if raw.ndim != 4 or raw.shape[-1] != 3:
            raise KilnError(f"episode '{path.name}': frames.npy must be uint8 [T, H, W, 3], got shape {list(raw.shape)}")
        images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in raw]
    elif (path / "frames").is_dir():
        files = sorted(f for f in (path / "frames").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        images = [Image.open(f).convert("RGB") for f in files]
    else:
        raise KilnError(f"episode '{path.name}' has neither frames/ (images) nor frames.npy")
    if (path / "actions.npy").is_file():
        actions = np.load(path / "actions.npy").astype(np.float32)
        names = [f"a{i}" for i in range(actions.shape[-1])] if actions.ndim == 2 else []
    elif (path / "actions.csv").is_file():
        import pandas as pd

        table = pd.read_csv(path / "actions.csv")
        actions, names = table.to_numpy(np.float32), list(table.columns)
    else:
        raise KilnError(f"episode '{path.name}' has no actions.csv or actions.npy")
    if actions.ndim != 2:
        raise KilnError(f"episode '{path.name}': actions must be a table [frames, action_dim], got shape {list(actions.shape)}")
    if len(actions) != len(images):
        raise KilnError(f"episode '{path.name}' has {len(images)} frames but {len(actions)} actions; "
                        f"give one action per frame (the action applied at that frame)")
    if not np.isfinite(actions).all():
        raise KilnError(f"episode '{path.name}': actions contain NaN or inf")
    frames = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR) if im.size != (size, size) else im) for im in images])
    return frames, actions, names


def episode_splits(source: Path, names: list[str], val_episodes: int, test_episodes: int, seed: int) -> dict[str, str]:
    """Episode name -> split: as source/splits.json names them, else val and test drawn at random with `seed`."""
    split_of = {name: "train" for name in names}
    if (source / "splits.json").is_file():
        named = json.loads((source / "splits.json").read_text())
        for split in ("val", "test"):
            for name in named.get(split, []):
                if name not in split_of:
                    raise KilnError(f"splits.json names episode '{name}' in {split}, but {source} has no such directory")
                split_of[name] = split
        return split_of
    if val_episodes + test_episodes >= len(names):
        raise KilnError(f"{len(names)} episodes cannot give {val_episodes} val + {test_episodes} test episodes and leave "
                        f"some for training; lower --val-episodes/--test-episodes or add splits.json")
    order = np.random.default_rng(seed).permutation(len(names))
    for i in order[:val_episodes]:
        split_of[names[i]] = "val"
    for i in order[val_episodes:val_episodes + test_episodes]:
        split_of[names[i]] = "test"
    return split_of


def import_frames_dir(source: Path, out: Path, size: int, val_episodes: int, test_episodes: int, shard_frames: int, seed: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """`kiln data world --frames-dir DIR`: a user's recordings in the generic layout -> a dataset directory.
    Without splits.json, val and test are whole episodes drawn at random with `seed`."""
    if not source.is_dir():
        raise KilnError(f"--frames-dir '{source}' is not a directory")
    names = sorted(p.name for p in source.iterdir() if p.is_dir())
    if not names:
        raise KilnError(f"--frames-dir '{source}' has no episode directories (DIR/<episode>/frames/ + actions.csv)")
    started = time.perf_counter()
    split_of = episode_splits(source, names, val_episodes, test_episodes, seed)
    with dataset_dir(out) as tmp:
        episodes, action_names = [], None
        for index, name in enumerate(names):
            frames, actions, columns = read_episode(source / name, size)
            if action_names is None:
                action_names = columns
            elif len(columns) != len(action_names):
                raise KilnError(f"episode '{name}' has {len(columns)} action columns but '{names[0]}' has {len(action_names)}")
            episodes.append({"episode": index, "name": name, "frames": frames, "actions": actions, "split": split_of[name]})
        info = {"source": str(source), "size": size, "action_dim": len(action_names), "action_names": action_names,
                "import_seconds": round(time.perf_counter() - started, 2), "split_rule": "by episode (splits.json or random)"}
        info = write_dataset(tmp, episodes, info, shard_frames)
    log(f"Wrote {out} from {source}: " + ", ".join(f"{s} {len(info['splits'][s]['episodes'])} episodes" for s in SPLITS))
    return info


# ----------------------------------------------------------------------------- reading


def read_info(data_dir: Path) -> dict[str, Any]:
    info = dataset_info(data_dir, "world", f"kiln data world --env CarRacing-v3 --out {data_dir}  (or --frames-dir DIR "
                                           "for your own recordings)")
    if info.get("format") != FORMAT:
        raise KilnError(f"'{data_dir / 'dataset.json'}' is not a {FORMAT} dataset (format {info.get('format')!r}); rewrite it with kiln data world")
    return info


class WindowDataset(Dataset):
    """Windows of `length` frames (every `frame_skip`-th) from the shards of one split, as uint8 frames
    [L, S, S, 3] and float actions [L, A] (the action of a step is the mean over the frames it spans; the last
    one is never used). Windows start every `stride` frames of an episode. `__getitems__` reads a whole batch
    with one fancy index per shard."""

    def __init__(self, data_dir: Path, split: str, info: dict[str, Any], length: int, stride: int = 1, frame_skip: int = 1):
        self.data_dir, self.length, self.skip = Path(data_dir), length, frame_skip
        self.shards = [shard["name"] for shard in info["splits"][split]["shards"]]
        span = length * frame_skip  # frames a window touches, its last action's span included
        starts = []
        for k, name in enumerate(self.shards):
            episode = np.load(self.data_dir / f"{name}.episodes.npy")
            if len(episode) < span:
                continue
            first = np.r_[0, np.flatnonzero(np.diff(episode)) + 1]  # where each episode begins in the shard
            offset = np.arange(len(episode) - span + 1) - first[np.searchsorted(first, np.arange(len(episode) - span + 1), "right") - 1]
            candidate = np.arange(len(episode) - span + 1)
            keep = (episode[candidate] == episode[candidate + span - 1]) & (offset % stride == 0)
            starts.append(np.stack([np.full(keep.sum(), k), candidate[keep]], 1))
        self.starts = np.concatenate(starts) if starts else np.zeros((0, 2), np.int64)
        if len(self.starts) == 0:
            raise KilnError(f"the {split} split of '{data_dir}' has no episode of {span} frames; lower data.sequence_length/"
                            f"eval_horizon or collect longer episodes")
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # worker processes open their own memory maps

    def arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = {}
        if shard not in self._arrays:
            name = self.shards[shard]
            self._arrays[shard] = (np.load(self.data_dir / f"{name}.frames.npy", mmap_mode="r"),
                                   np.load(self.data_dir / f"{name}.actions.npy", mmap_mode="r"))
        return self._arrays[shard]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        picked = self.starts[np.asarray(indices)]
        steps = np.arange(self.length * self.skip)
        frames = actions = None
        for shard in np.unique(picked[:, 0]):
            rows = np.flatnonzero(picked[:, 0] == shard)
            index = picked[rows, 1:2] + steps  # [b, L * skip] frame positions in the shard
            shard_frames, shard_actions = self.arrays(int(shard))
            got_frames = shard_frames[index[:, ::self.skip].ravel()]
            got_actions = np.asarray(shard_actions[index.ravel()]).reshape(len(rows), self.length, self.skip, -1).mean(2)
            if frames is None:
                frames = np.empty((len(picked), self.length, *got_frames.shape[1:]), np.uint8)
                actions = np.empty((len(picked), self.length, got_actions.shape[-1]), np.float32)
            frames[rows] = got_frames.reshape(len(rows), self.length, *got_frames.shape[1:])
            actions[rows] = got_actions
        return {"frames": torch.from_numpy(frames), "actions": torch.from_numpy(actions)}


def load_data(cfg, log: Callable[[str], None] = print) -> Splits:
    """data.dir as window datasets: training windows of data.sequence_length frames at every start, validation and
    test windows of context_frames + eval_horizon frames every eval_stride frames."""
    data_dir = Path(cfg.data.dir)
    info = read_info(data_dir)
    side = cfg.model.decoder.init_size * 2 ** len(cfg.model.decoder.stages)
    if info["size"] != side:
        raise KilnError(f"'{data_dir}' holds {info['size']}x{info['size']} frames but the model makes {side}x{side} "
                        f"(model.decoder.init_size * 2^len(stages)); change init_size or rewrite the data with --size {side}")
    eval_length = cfg.model.context_frames + cfg.data.eval_horizon
    splits = Splits(
        train=WindowDataset(data_dir, "train", info, cfg.data.sequence_length, 1, cfg.data.frame_skip),
        val=WindowDataset(data_dir, "val", info, eval_length, cfg.data.eval_stride, cfg.data.frame_skip),
        test=WindowDataset(data_dir, "test", info, eval_length, cfg.data.eval_stride, cfg.data.frame_skip),
        info=info)
    log(f"Windows: {len(splits.train):,} train ({cfg.data.sequence_length} frames), {len(splits.val):,} val and "
        f"{len(splits.test):,} test ({eval_length} frames) from {data_dir}")
    return splits


# ----------------------------------------------------------------------------- batches on the device


def to_float(frames: Tensor) -> Tensor:
    """uint8 [B, L, H, W, 3] -> float [B, L, 3, H, W] in [0, 1]."""
    return frames.permute(0, 1, 4, 2, 3).float().div_(255)


def augment(frames: Tensor, brightness: float, contrast: float, crop_scale: tuple[float, float]) -> Tensor:
    """Brightness, contrast and a random resized crop, one draw per sequence: frames [B, L, 3, H, W] in [0, 1]."""
    b, length = frames.shape[:2]
    device = frames.device
    draw = torch.rand(b, 5, device=device)
    bright = 1 + brightness * (2 * draw[:, 0] - 1)
    contr = 1 + contrast * (2 * draw[:, 1] - 1)
    mean = frames.mean(dim=(2, 3, 4), keepdim=True)  # per frame
    frames = ((frames - mean) * contr.view(b, 1, 1, 1, 1) + mean) * bright.view(b, 1, 1, 1, 1)
    low, high = crop_scale
    if low < 1:
        side = (low + (high - low) * draw[:, 2]).sqrt()  # crop side as a share of the frame (area share = side^2)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, 0, 2] = (1 - side) * (2 * draw[:, 3] - 1)  # crop centre, kept inside the frame
        theta[:, 1, 2] = (1 - side) * (2 * draw[:, 4] - 1)
        flat = frames.flatten(0, 1)
        grid = torch.nn.functional.affine_grid(theta.repeat_interleave(length, 0), list(flat.shape), align_corners=False)
        frames = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False).view_as(frames)
    return frames.clamp(0, 1)
