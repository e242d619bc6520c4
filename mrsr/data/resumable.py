"""A training data loader that resumes exactly, also from a checkpoint taken mid-epoch.

* The order of an epoch is a permutation drawn from ``(seed, epoch)`` (sharded over ranks
  like :class:`~torch.utils.data.DistributedSampler`), not from the global RNG.
* Every sample's random crop and flips run under its own seed ``(seed, epoch, position)``
  inside :func:`torch.random.fork_rng`, so loading data never touches the global RNG
  (which :class:`mrsr.callbacks.RngState` checkpoints for the model's own randomness)
  and gives the same patches with any number of workers.
* The loader has ``state_dict`` / ``load_state_dict`` (Lightning stores it in the
  checkpoint): the epoch and how many batches of it were trained; a resumed run skips them.

:class:`mrsr.data.datamodule.MRDataModule` gives its training loader this way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MASK = (1 << 63) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing, stable across runs)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK)) * 0xBF58476D1CE4E5B9 & ((1 << 64) - 1)
        h ^= h >> 31
    return h & _MASK


class SeededDataset(Dataset):
    """``dataset[(index, seed)]``: ``dataset[index]`` with the global torch, numpy and
    Python RNGs seeded by ``seed`` for the call and restored afterwards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ResumableSampler(DistributedSampler):
    """Shuffled, rank-sharded ``(index, sample seed)`` pairs from ``(seed, epoch)``; starts
    ``start`` samples into the epoch once (after a resume), then at 0."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, start = self.epoch, self.start
        if start >= self.num_samples:  # the checkpoint closed its epoch
            epoch, start = epoch + 1, 0
        self.start = 0
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        order += order[: self.total_size - len(order)]  # pad so every rank has num_samples
        for pos in range(self.rank + start * self.num_replicas, self.total_size, self.num_replicas):
            yield order[pos], _mix(self.seed, epoch, pos)


class ResumableLoader(DataLoader):
    """DataLoader whose state is (epoch, samples trained this epoch), read from the trainer."""

    def __init__(
        self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        batches = self.progress() if self.progress is not None else 0
        return {"epoch": int(sampler.epoch), "start": int(batches) * int(self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        sampler.set_epoch(int(state["epoch"]))
        sampler.start = int(state["start"])


def resumable(
    loader: DataLoader, seed: int, progress: Callable[[], int] | None = None
) -> ResumableLoader:
    """The same batches settings as ``loader`` (a map-style training loader), made resumable."""
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    dataset = SeededDataset(loader.dataset)
    return ResumableLoader(
        dataset,
        batch_size=loader.batch_size,
        sampler=ResumableSampler(dataset, seed, world, rank),
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        generator=torch.Generator().manual_seed(seed),  # worker seeds: not from the global RNG
        progress=progress,
    )
