"""Checkpoint files: written atomically, read with `weights_only=True`, checked before use.

- checkpoints/*.ckpt: full training state (model, EMA, optimizer, scheduler, RNG, counters, history).
- best_model.pt / final_model.pt: weights plus the config that rebuilds the model.
Both are plain dicts of tensors and JSON-like values, so `torch.load(path, weights_only=True)` reads them.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError

FORMAT = 1


def load_failure(err: Exception) -> tuple[bool, str]:
    """Why torch.load(weights_only=True) failed, as one whole line; True when it refused a global (nothing ran)."""
    text = str(err).strip()
    if text.startswith("Weights only load failed"):  # a pickle that holds more than tensors
        # torch's text is advice about weights_only=False around the line that names the global, e.g. "Trying to load
        # unsupported GLOBAL posix.system whose module posix is blocked." or "WeightsUnpickler error: Unsupported
        # global: GLOBAL print was not an allowed global by default. Please use ...": keep that sentence
        detail = next((line.split("WeightsUnpickler error:")[-1] for line in text.splitlines() if "GLOBAL" in line), "")
        return True, " ".join(detail.split(". ")[0].split()).rstrip(".") or "a global outside the allowed types"
    return False, " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def load_checkpoint(path: str | Path, recipe: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory stands for its best weights
        path = path / "best_model.pt"
    if not path.is_file():
        raise KilnError(f"checkpoint '{path}' not found; pass a run's best_model.pt, final_model.pt or checkpoints/*.ckpt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated, foreign or non-zip files
        refused, reason = load_failure(err)
        if refused:
            raise KilnError(f"checkpoint '{path}' holds Python objects other than tensors and plain values ({reason}); "
                            f"kiln loads files with weights_only=True and runs no code from them: pass a file written by kiln") from None
        raise KilnError(f"checkpoint '{path}' could not be read ({reason}); the file is corrupt or not a PyTorch checkpoint") from None
    if not isinstance(obj, dict) or obj.get("kiln_format") != FORMAT:
        raise KilnError(f"'{path}' is not a kiln checkpoint; use best_model.pt, final_model.pt or a .ckpt written by kiln train")
    if recipe is not None and obj.get("recipe") != recipe:
        raise KilnError(f"checkpoint '{path}' is from recipe '{obj.get('recipe')}', not '{recipe}'")
    return obj


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """load_state_dict with a one-line error naming the first mismatch."""
    mine = module.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    wrong = [k for k in mine if k in state and state[k].shape != mine[k].shape]
    if missing or unexpected or wrong:
        key = (wrong or missing or unexpected)[0]
        detail = (
            f"'{key}' has shape {tuple(state[key].shape)}, the model expects {tuple(mine[key].shape)}" if wrong
            else f"'{key}' is {'missing' if missing else 'unexpected'}"
        )
        raise KilnError(f"checkpoint '{source}' does not fit this model ({detail}); use the model settings of the run that wrote it")
    module.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def link_aliases(run_dir: Path, aliases: dict[str, tuple[str, ...]], written: str, **fields: Any) -> None:
    """Give the file just written (`written`, relative to run_dir, a pattern such as "checkpoints/epoch_{epoch:03d}.ckpt")
    the extra names a task's seed expects (Task.file_aliases): hard links, copies where the filesystem has none.
    Each name is replaced atomically, so it never points at a half-written or stale file."""
    for name in aliases.get(written, ()):
        source, target = run_dir / written.format(**fields), run_dir / name.format(**fields)
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
