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

Every shard file is checked against dataset.json (dtype, shape, frame count, finite actions) when a split is opened,
so a damaged directory is one line naming the file before training starts. Users' own recordings come in through
recordings.py (`kiln data world --frames-dir`).
"""

from __future__ import annotations

import time
from pathlib import Path
from tokenize import TokenError
from typing import Any, Callable, Iterable

import numpy as np
import torch
from pydantic import BaseModel, Field, StrictInt, StrictStr
from torch import Tensor
from torch.utils.data import Dataset

from kiln.engine.files import dataset_dir, write_json
from kiln.engine.task import Splits
from kiln.errors import KilnError
from kiln.recipes import dataset_info

FORMAT = "kiln-world-frames/1"
SPLITS = ("train", "val", "test")
CARRACING_ACTIONS = ["steer", "gas", "brake"]
# More action columns than any controller has; bounds the model's action layers that dataset.json sizes.
MAX_ACTION_DIM = 256
REWRITE = "rewrite the dataset with kiln data world"


# ----------------------------------------------------------------------------- writing


def write_shards(out: Path, episodes: Iterable[dict[str, Any]], shard_frames: int) -> dict[str, Any]:
    """Episodes (frames uint8 [T, S, S, 3], actions [T, A], split, as they come) -> shards in `out` (inside a
    dataset_dir block, which renames the whole directory into place); at most one shard per split is held in memory.
    Returns dataset.json's `splits`: per split its shards, frames and episodes (every key but the arrays)."""
    pending: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    splits: dict[str, Any] = {split: {"shards": [], "frames": 0, "episodes": []} for split in SPLITS}

    def flush(split: str) -> None:
        members, shards = pending[split], splits[split]["shards"]
        name = f"{split}/shard_{len(shards):05d}"
        np.save(out / f"{name}.frames.npy", np.concatenate([e["frames"] for e in members]))
        np.save(out / f"{name}.actions.npy", np.concatenate([e["actions"] for e in members]).astype(np.float32))
        np.save(out / f"{name}.episodes.npy", np.concatenate([np.full(len(e["frames"]), e["episode"], np.int32) for e in members]))
        shards.append({"name": name, "frames": sum(len(e["frames"]) for e in members)})
        pending[split] = []

    for split in SPLITS:
        (out / split).mkdir(parents=True)
    for episode in episodes:
        split = episode["split"]
        if pending[split] and sum(len(e["frames"]) for e in pending[split]) + len(episode["frames"]) > shard_frames:
            flush(split)
        pending[split].append(episode)
        splits[split]["frames"] += len(episode["frames"])
        splits[split]["episodes"].append({k: v for k, v in episode.items() if k not in ("frames", "actions", "split")}
                                         | {"frames": len(episode["frames"])})
    for split in SPLITS:
        if not pending[split]:
            raise KilnError(f"the {split} split has no episodes; collect more episodes or name some in splits.json")
        flush(split)
    return splits


def write_info(out: Path, info: dict[str, Any], splits: dict[str, Any]) -> dict[str, Any]:
    """dataset.json beside the shards; returns it."""
    info = {"format": FORMAT, **info, "splits": splits}
    write_json(out / "dataset.json", info)
    return info


def collect_dataset(out: Path, settings, log: Callable[[str], None]) -> dict[str, Any]:
    """`kiln data world --env ...`: simulator rollouts -> a dataset directory, each episode written as it arrives."""
    from kiln.engine.progress import track
    from kiln.recipes.world.sim import collect, collection_stats

    with dataset_dir(out) as tmp:  # a taken --out is refused before the (long) collection
        started = time.perf_counter()
        episodes = track(collect(settings, log), "Collecting episodes", settings.episodes, log)
        splits = write_shards(tmp, episodes, settings.shard_frames)
        stats = collection_stats(settings, [e for s in SPLITS for e in splits[s]["episodes"]], time.perf_counter() - started, log)
        info = write_info(tmp, {"source": settings.env, "size": settings.size, "action_dim": 3, "action_names": CARRACING_ACTIONS,
                                "collect": settings.model_dump(), **stats,
                                "split_rule": "by episode; test episodes drive track seeds from a range train and val never use"},
                          splits)
    log(f"Wrote {out}: " + ", ".join(f"{s} {len(info['splits'][s]['episodes'])} episodes / {info['splits'][s]['frames']:,} frames"
                                     for s in SPLITS))
    return info


# ----------------------------------------------------------------------------- reading


class ShardEntry(BaseModel):
    name: StrictStr
    frames: StrictInt = Field(ge=1)


class SplitEntry(BaseModel):
    shards: list[ShardEntry] = Field(min_length=1)


class SplitEntries(BaseModel):
    train: SplitEntry
    val: SplitEntry
    test: SplitEntry


class DatasetInfo(BaseModel):
    """The keys of dataset.json the reader relies on (the rest is provenance)."""

    size: StrictInt = Field(ge=1)
    action_dim: StrictInt = Field(ge=1, le=MAX_ACTION_DIM)
    action_names: list[StrictStr]
    splits: SplitEntries


def read_info(data_dir: Path) -> dict[str, Any]:
    """dataset.json, its format and the keys the reader uses checked: anything else is one line naming the key."""
    from kiln.config import validate

    info = dataset_info(data_dir, "world", f"kiln data world --env CarRacing-v3 --out {data_dir}  (or --frames-dir DIR "
                                           "for your own recordings)")
    path = Path(data_dir) / "dataset.json"
    if info.get("format") != FORMAT:
        raise KilnError(f"'{path}' is not a {FORMAT} dataset (format {info.get('format')!r}); {REWRITE}")
    try:
        validate(info, DatasetInfo, f"'{path}'")
    except KilnError as err:
        raise KilnError(f"{err}; {REWRITE}") from None
    return info


def open_array(path: Path, fix: str = REWRITE) -> np.ndarray:
    """A .npy file, memory-mapped (only its header is read, and its length checked against it): a missing, truncated or
    foreign file is one line naming it and saying `fix`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise KilnError(f"'{path}' is missing; {fix}") from None
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as err:  # the last two: a damaged header's dict
        reason = "truncated" if "mmap length" in str(err) else f"not a .npy array ({' '.join(str(err).split())})"
        raise KilnError(f"'{path}' is {reason}; {fix}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        raise KilnError(f"'{path}' is not a .npy array (an archive of several); {fix}")
    return array


def open_shard(data_dir: Path, shard: dict[str, Any], info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shard's frames, actions and episode ids (memory maps), checked against dataset.json: dtypes, shapes, the
    frame count, and every action finite. A file that differs is one line naming it."""
    fix = REWRITE
    if not (data_dir / shard["name"]).resolve().is_relative_to(data_dir.resolve()):
        raise KilnError(f"'{data_dir / 'dataset.json'}' names shard '{shard['name']}' outside the dataset directory; {fix}")
    n, size = shard["frames"], info["size"]
    wanted = {"frames": ("frames", "uint8", (n, size, size, 3)), "actions": ("actions", "float", (n, info["action_dim"])),
              "episodes": ("episode ids", "integer", (n,))}
    arrays = []
    for kind, (what, dtype, shape) in wanted.items():
        path = data_dir / f"{shard['name']}.{kind}.npy"
        array = open_array(path)
        right_type = array.dtype == np.uint8 if kind == "frames" else array.dtype.kind in ("f" if kind == "actions" else "iu")
        if not right_type or array.shape != shape:
            held = f"{array.shape[0]} {what}" if right_type and array.ndim and array.shape[1:] == shape[1:] else f"{array.dtype} {list(array.shape)}"
            raise KilnError(f"'{path}' holds {held}, but dataset.json gives the shard {n} frames ({dtype} {list(shape)}); {fix}")
        arrays.append(array)
    if not np.isfinite(arrays[1]).all():
        raise KilnError(f"'{data_dir / shard['name']}.actions.npy' holds NaN or inf actions; {fix}")
    return arrays[0], arrays[1], np.asarray(arrays[2])


class WindowDataset(Dataset):
    """Windows of `length` frames (every `frame_skip`-th) from the shards of one split, as uint8 frames
    [L, S, S, 3] and float actions [L, A] (the action of a step is the mean over the frames it spans; the last
    one is never used). Windows start every `stride` frames of an episode. `__getitems__` reads a whole batch
    with one fancy index per shard."""

    def __init__(self, data_dir: Path, split: str, info: dict[str, Any], length: int, stride: int = 1, frame_skip: int = 1):
        self.data_dir, self.length, self.skip = Path(data_dir), length, frame_skip
        entries = info["splits"][split]["shards"]
        self.shards = [shard["name"] for shard in entries]
        opened = [open_shard(self.data_dir, shard, info) for shard in entries]  # every file checked before training
        span = length * frame_skip  # frames a window touches, its last action's span included
        starts = []
        for k, (_, _, episode) in enumerate(opened):
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
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] | None = {k: (frames, actions) for k, (frames, actions, _) in enumerate(opened)}

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
