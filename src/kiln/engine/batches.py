"""Batches for the loop: `len(batches)` per epoch and `batches.epoch(epoch, start)`.

Two implementations with one ordering rule, so that a resumed run replays an interrupted epoch
exactly and DDP ranks split it without overlap:

- `TensorBatches` gathers mini-batches from in-memory tensors in the main process: far cheaper per
  step than a DataLoader, and the default for data that fits in memory.
- `LoaderBatches` runs a torch DataLoader (worker processes, pinned memory on GPU) over a map-style
  dataset, e.g. memory-mapped shards of frames that do not fit in memory. In-memory tensors take
  this path too when `train.num_workers > 0`.

The order of epoch e depends only on (seed, e). Under DDP, rank r takes positions r, r + W, r + 2W...
of that order, so with a per-device batch b the ranks' i-th batches together hold exactly the
samples of batch i of a one-process run with batch b x W.

`predict` runs a recipe's function over a whole split in order on the same batches: every recipe's
evaluation and report predict through it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from kiln.engine.progress import track
from kiln.errors import KilnError


class Batches(Protocol):
    size: int  # samples in the split, over all ranks

    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """The batches of `epoch` from batch number `start` on."""


def epoch_order(size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1, even: bool = True) -> Tensor:
    """Sample indices this rank visits in `epoch`. `even` pads by wrapping around so every rank has the same
    number of samples (training needs equal steps per rank); validation does not pad, so nothing counts twice."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)) if shuffle else torch.arange(size)
    if world > 1:
        if even and size % world:
            order = torch.cat([order, order[:world - size % world]])
        order = order[rank::world]
    return order


def batches_per_epoch(size: int, batch_size: int, rank: int = 0, world: int = 1, even: bool = True) -> int:
    samples = -(-size // world) if even else -(-(size - rank) // world)  # this rank's share of epoch_order
    return -(-samples // batch_size)


class TensorBatches:
    """Mini-batches gathered from in-memory tensors (dict of equal-length tensors)."""

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, even: bool = True):
        self.tensors, self.batch_size, self.shuffle, self.seed = tensors, batch_size, shuffle, seed
        self.rank, self.world, self.even = rank, world, even
        self.size = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return batches_per_epoch(self.size, self.batch_size, self.rank, self.world, self.even)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
        order = epoch_order(self.size, self.shuffle, self.seed, epoch, self.rank, self.world, self.even)
        whole = not self.shuffle and self.world == 1  # contiguous slices are views: no copy at all
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, (i + 1) * self.batch_size
            yield {k: v[lo:hi] if whole else v[order[lo:hi]] for k, v in self.tensors.items()}


class TensorDictDataset(Dataset):
    """In-memory tensors as a map-style dataset, fetched a whole batch at a time (`__getitems__`)."""

    def __init__(self, tensors: dict[str, Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices)
        return {k: v[index] for k, v in self.tensors.items()}


def collate(samples) -> dict[str, Tensor]:
    """A dataset's `__getitems__` already returns a batch; single samples are stacked as usual."""
    return samples if isinstance(samples, dict) else default_collate(samples)


class EpochBatchSampler:
    """The index lists of one epoch from a start batch; the loop sets epoch and start before each pass, and
    the sampler runs in the main process, so persistent workers keep serving it."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, rank: int, world: int, even: bool):
        self.args = (size, shuffle, seed)
        self.batch_size, self.rank, self.world, self.even = batch_size, rank, world, even
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return batches_per_epoch(self.args[0], self.batch_size, self.rank, self.world, self.even)

    def __iter__(self) -> Iterator[list[int]]:
        size, shuffle, seed = self.args
        order = epoch_order(size, shuffle, seed, self.epoch, self.rank, self.world, self.even)
        for i in range(self.start, len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


class LoaderBatches:
    """A DataLoader over a map-style dataset, with the engine's (seed, epoch) order and rank sharding."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 even: bool = True, num_workers: int = 0, pin_memory: bool = False):
        self.size = len(dataset)
        self.sampler = EpochBatchSampler(self.size, batch_size, shuffle, seed, rank, world, even)
        # A generator of its own: a DataLoader draws its workers' base seed when an iterator starts, from torch's
        # global RNG without one, so a resumed process (whose iterators start at other moments) would shift the
        # global stream the training step's augmentation and dropout draw from, and resume would not be exact.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers, collate_fn=collate,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, Tensor]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        return iter(self.loader)


def make_batches(split: dict[str, Tensor] | Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1, even: bool = True, num_workers: int = 0, pin_memory: bool = False) -> Batches:
    """In-memory tensors without workers: TensorBatches; a dataset, or tensors with workers: LoaderBatches."""
    if isinstance(split, dict) and num_workers == 0:
        return TensorBatches(split, batch_size, shuffle, seed, rank, world, even)
    dataset = TensorDictDataset(split) if isinstance(split, dict) else split
    return LoaderBatches(dataset, batch_size, shuffle, seed, rank, world, even, num_workers, pin_memory)


@torch.no_grad()
def predict(split: dict[str, Tensor] | Dataset, step: Callable[[dict[str, Tensor]], Tensor | dict[str, Tensor]],
            batch_size: int, device: torch.device | str | None = None, progress: str | None = None) -> Tensor | dict[str, Tensor]:
    """`step(batch)` over a whole split in order, `batch_size` samples at a time on `device` (default: where they
    are); its outputs, a tensor or a dict of tensors with the batch dimension first, concatenated on the CPU, with
    floating point ones as float32 (an autocast step returns bf16). With `progress` (its description), the batches
    show a progress bar (engine/progress.py): for long evaluations, never inside training's validation."""
    def to_cpu(x: Tensor) -> Tensor:
        return x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()

    parts = []
    batches = make_batches(split, batch_size, shuffle=False, even=False)
    for batch in batches.epoch() if progress is None else track(batches.epoch(), progress, len(batches)):
        out = step({k: v.to(device) for k, v in batch.items()} if device is not None else batch)
        parts.append({k: to_cpu(v) for k, v in out.items()} if isinstance(out, dict) else to_cpu(out))
    if not parts:
        raise KilnError("the split to predict on is empty; regenerate the dataset with more samples")
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)
