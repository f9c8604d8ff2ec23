"""Users' own recordings (CARLA, nuScenes, a game) -> a world dataset directory: `kiln data world --frames-dir DIR`.

    DIR/<episode>/frames/*.png|jpg   one image per frame, in file-name order (or frames.npy: uint8 [T, H, W, 3])
    DIR/<episode>/actions.csv        one row per frame, a header naming the action columns (or actions.npy [T, A])
    DIR/splits.json                  optional: {"val": [episode names], "test": [episode names]}

Every episode's actions are read first (they are small), so a bad file is found before any frame is decoded; frames are
then decoded, resized and written one episode at a time. Anything malformed is one line naming the file (and the line
of a CSV), and nothing is written.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from kiln.engine.files import dataset_dir
from kiln.errors import KilnError
from kiln.recipes.world.data import MAX_ACTION_DIM, SPLITS, open_array, write_info, write_shards

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}  # only these decoders ever see a file
MIN_EPISODE_FRAMES = 2  # the shortest window: one observed frame and one to predict
FLOAT32_MAX = float(np.finfo(np.float32).max)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ----------------------------------------------------------------------------- actions


def read_actions_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """actions.csv -> (float32 [T, A], the header's column names); a cell that is not a finite float32 names its line."""
    import pandas as pd

    try:  # every cell as text, so that a bad one can be shown as written
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError, OSError) as err:  # EmptyDataError and UnicodeDecodeError are ValueErrors
        raise KilnError(f"'{path}' is not a CSV table of actions ({one_line(err)}); write a header naming the action "
                        f"columns, then one row per frame") from None
    while len(table) and (table.iloc[-1] == "").all():  # blank lines at the end of the file
        table = table.iloc[:-1]
    values = table.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN (not a number, or empty), inf, or beyond float32
    if bad.any():
        row, column = np.argwhere(bad)[0]
        text = table.iat[row, column]
        reason = "is empty" if text == "" else f"{text[:40]!r} is not a number" if np.isnan(values[row, column]) else \
            f"{text[:40]!r} is not a finite float32"
        raise KilnError(f"'{path}' line {row + 2}, column {str(table.columns[column])[:40]!r}: {reason}; give every action as a number")
    return values.astype(np.float32), [str(name) for name in table.columns]


def read_actions_npy(path: Path) -> np.ndarray:
    actions = open_array(path, "save it with np.save as a float array [frames, action_dim]")
    if actions.dtype.kind not in "iuf" or actions.ndim != 2:
        raise KilnError(f"'{path}' holds {actions.dtype} {list(actions.shape)}; actions must be numbers [frames, action_dim]")
    with np.errstate(over="ignore"):
        actions = np.asarray(actions, np.float32)
    if not np.isfinite(actions).all():
        row = int(np.argwhere(~np.isfinite(actions))[0, 0])
        raise KilnError(f"'{path}' row {row}: actions contain NaN, inf or numbers beyond float32")
    return actions


def read_actions(episode: Path) -> tuple[np.ndarray, list[str] | None, Path]:
    """An episode's actions [T, A], their column names (None for actions.npy, which has none) and the file."""
    if (episode / "actions.npy").is_file():
        path = episode / "actions.npy"
        actions, names = read_actions_npy(path), None
    elif (episode / "actions.csv").is_file():
        path = episode / "actions.csv"
        actions, names = read_actions_csv(path)
    else:
        raise KilnError(f"'{episode}' has no actions.csv (or actions.npy): give one row of actions per frame, "
                        f"under a header naming the columns")
    if not 1 <= actions.shape[1] <= MAX_ACTION_DIM:
        raise KilnError(f"'{path}' has {actions.shape[1]} action columns; give 1 to {MAX_ACTION_DIM}")
    return actions, names, path


# ----------------------------------------------------------------------------- frames


def read_image(path: Path, size: int, first: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """One frame file -> (uint8 [size, size, 3], its width x height). The header is checked before anything is decoded:
    its format, its pixel count (Pillow's decompression-bomb limit) and that it matches the episode's first frame."""
    from PIL import Image

    fix = "re-export it or remove it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[IMAGE_FORMATS[path.suffix.lower()]]) as image:
                if first is not None and image.size != first:
                    raise KilnError(f"'{path}' is {image.width}x{image.height} but the episode's first frame is "
                                    f"{first[0]}x{first[1]}; export every frame of an episode at one size")
                frame = image.convert("RGB")
                if frame.size != (size, size):
                    frame = frame.resize((size, size), Image.BILINEAR)
                return np.asarray(frame), image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise KilnError(f"'{path}' has more than {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's limit for one image); "
                        f"export smaller frames") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise KilnError(f"'{path}' is not a readable image ({one_line(err)}); {fix}") from None


def read_frames_npy(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    raw = open_array(path, "save it with np.save as uint8 [frames, height, width, 3]")
    if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[-1] != 3 or 0 in raw.shape[1:3]:
        raise KilnError(f"'{path}' holds {raw.dtype} {list(raw.shape)}; frames must be uint8 [frames, height, width, 3]")
    if raw.shape[1:3] == (size, size):
        return np.asarray(raw)
    return np.stack([np.asarray(Image.fromarray(np.asarray(frame)).resize((size, size), Image.BILINEAR)) for frame in raw]) \
        if len(raw) else np.zeros((0, size, size, 3), np.uint8)


def read_frames(episode: Path, size: int) -> np.ndarray:
    """An episode's frames, resized to uint8 [T, size, size, 3] one at a time (never the full-size episode in memory)."""
    if (episode / "frames.npy").is_file():
        frames, where = read_frames_npy(episode / "frames.npy", size), episode / "frames.npy"
    elif (episode / "frames").is_dir():
        where = episode / "frames"
        files = sorted(f for f in where.iterdir() if f.suffix.lower() in IMAGE_FORMATS)
        if not files:
            raise KilnError(f"'{where}' holds no {'/'.join(IMAGE_FORMATS)} images; one image per frame, in file-name order")
        frames, first = np.empty((len(files), size, size, 3), np.uint8), None
        for t, path in enumerate(files):
            frames[t], first = read_image(path, size, first)
    else:
        raise KilnError(f"'{episode}' has neither frames/ (one image per frame) nor frames.npy")
    if len(frames) < MIN_EPISODE_FRAMES:
        raise KilnError(f"'{episode}' has {len(frames)} frame{'s' * (len(frames) != 1)} ({where.name}); an episode needs at "
                        f"least {MIN_EPISODE_FRAMES}, one observed and one to predict: drop it or record longer")
    return frames


# ----------------------------------------------------------------------------- splits and the import


def read_splits_file(path: Path, names: list[str]) -> dict[str, str]:
    """splits.json -> episode name -> split; every name it gives must be an episode directory, in one split only."""
    form = '{"val": [episode names], "test": [episode names]}'
    try:
        named = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, or nested beyond the parser
        raise KilnError(f"'{path}' is not JSON ({one_line(err)[:120]}); write it as {form}") from None
    if not isinstance(named, dict) or set(named) - set(SPLITS) or \
            not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in named.values()):
        raise KilnError(f"'{path}' must be {form} (an optional \"train\" list too); got {json.dumps(named)[:80]}")
    split_of = {name: "train" for name in names}
    given: dict[str, str] = {}
    for split, members in named.items():
        for name in members:
            if name not in split_of:
                raise KilnError(f"'{path}' names episode {name[:60]!r} in {split}, but {path.parent} has no such directory")
            if given.get(name, split) != split:
                raise KilnError(f"'{path}' names episode {name[:60]!r} in both {given[name]} and {split}; give each episode one split")
            given[name] = split_of[name] = split
    empty = [split for split in SPLITS if split not in split_of.values()]
    if empty:
        raise KilnError(f"'{path}' leaves the {' and '.join(empty)} split{'s' * (len(empty) > 1)} without episodes; "
                        f"name at least one episode for each of val and test, and leave some for training")
    return split_of


def episode_splits(source: Path, names: list[str], val_episodes: int, test_episodes: int, seed: int) -> dict[str, str]:
    """Episode name -> split: as source/splits.json names them, else val and test drawn at random with `seed`."""
    if (source / "splits.json").is_file():
        return read_splits_file(source / "splits.json", names)
    if val_episodes + test_episodes >= len(names):
        raise KilnError(f"{len(names)} episodes cannot give {val_episodes} val + {test_episodes} test episodes and leave "
                        f"some for training; lower --val-episodes/--test-episodes or add splits.json")
    split_of = {name: "train" for name in names}
    order = np.random.default_rng(seed).permutation(len(names))
    for i in order[:val_episodes]:
        split_of[names[i]] = "val"
    for i in order[val_episodes:val_episodes + test_episodes]:
        split_of[names[i]] = "test"
    return split_of


def action_tables(source: Path, names: list[str]) -> tuple[list[tuple[np.ndarray, Path]], list[str]]:
    """Every episode's actions and their file, and the action names they share (a0, a1, ... where only actions.npy
    files, which name none, are given)."""
    tables, columns = [], None
    for name in names:
        actions, names_here, path = read_actions(source / name)
        if tables and actions.shape[1] != tables[0][0].shape[1]:
            raise KilnError(f"'{path}' has {actions.shape[1]} action columns but '{tables[0][1]}' has {tables[0][0].shape[1]}")
        if names_here is not None and columns is not None and names_here != columns:
            raise KilnError(f"'{path}' names its actions {names_here} but an earlier episode {columns}; "
                            f"give every episode the same columns in the same order")
        columns = columns or names_here
        tables.append((actions, path))
    return tables, columns or [f"a{i}" for i in range(tables[0][0].shape[1])]


def read_episodes(source: Path, names: list[str], tables: list[tuple[np.ndarray, Path]], split_of: dict[str, str],
                  size: int) -> Iterator[dict[str, Any]]:
    """The episodes with their frames, one at a time, for write_shards."""
    for index, (name, (actions, path)) in enumerate(zip(names, tables)):
        frames = read_frames(source / name, size)
        if len(actions) != len(frames):
            raise KilnError(f"episode '{name}' has {len(frames)} frames but {len(actions)} actions in '{path}'; "
                            f"give one action per frame (the action applied at that frame)")
        yield {"episode": index, "name": name, "frames": frames, "actions": actions, "split": split_of[name]}


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
    tables, action_names = action_tables(source, names)
    with dataset_dir(out) as tmp:
        splits = write_shards(tmp, read_episodes(source, names, tables, split_of, size), shard_frames)
        info = write_info(tmp, {"source": str(source), "size": size, "action_dim": len(action_names), "action_names": action_names,
                                "import_seconds": round(time.perf_counter() - started, 2),
                                "split_rule": "by episode (splits.json or random)"}, splits)
    log(f"Wrote {out} from {source}: " + ", ".join(f"{s} {len(info['splits'][s]['episodes'])} episodes" for s in SPLITS))
    return info
