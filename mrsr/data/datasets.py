"""Slice datasets over a :class:`VolumeStore`: one index built once, volumes loaded lazily."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mrsr.data.store import VolumeStore
from mrsr.data.types import Sample, SliceMeta, VolumeRef


class SliceDataset(Dataset):
    """Paired LR/HR slices.

    ``index`` lists ``(volume_position, slice)``. For training, ``patch`` gives the HR
    patch size: a random crop aligned to the scale (zero-padded where the slice is
    smaller) and random flips. For evaluation (``patch=None``) whole slices are returned.
    """

    def __init__(
        self,
        store: VolumeStore,
        refs: list[VolumeRef],
        index: list[tuple[int, int]],
        labels: dict[str, int],
        patch: int | None = None,
        flips: bool = False,
    ) -> None:
        self.store = store
        self.refs = refs
        self.index = index
        self.labels = labels
        self.patch = patch
        self.flips = flips
        scale = store.scale
        if patch is not None and patch % scale:
            raise ValueError(f"patch size {patch} does not divide by scale {scale}")

    def __len__(self) -> int:
        return len(self.index)

    def _random_patch(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # numpy views and single-threaded copies: torch's multi-threaded copy kernels stall
        # badly when the CPU is oversubscribed (training threads + loader), numpy does not.
        s, p = self.store.scale, self.patch // self.store.scale
        lr_a, hr_a = lr.numpy(), hr.numpy()
        h, w = lr_a.shape[-2:]
        if h < p or w < p:
            pad_h, pad_w = max(0, p - h), max(0, p - w)
            lr_a = np.pad(lr_a, ((0, 0), (0, pad_h), (0, pad_w)))
            hr_a = np.pad(hr_a, ((0, 0), (0, pad_h * s), (0, pad_w * s)))
            h, w = lr_a.shape[-2:]
        top = int(torch.randint(0, h - p + 1, ()))
        left = int(torch.randint(0, w - p + 1, ()))
        lr_a = lr_a[..., top : top + p, left : left + p]
        hr_a = hr_a[..., top * s : (top + p) * s, left * s : (left + p) * s]
        if self.flips:
            if torch.rand(()) < 0.5:
                lr_a, hr_a = lr_a[..., ::-1], hr_a[..., ::-1]
            if torch.rand(()) < 0.5:
                lr_a, hr_a = lr_a[..., ::-1, :], hr_a[..., ::-1, :]
        return _tensor(lr_a), _tensor(hr_a)

    def __getitem__(self, i: int) -> Sample:
        vpos, s = self.index[i]
        ref = self.refs[vpos]
        hr_vol, lr_vol = self.store.get(ref)
        hr, lr = hr_vol[s], lr_vol[s]  # views of the cached volume; collate copies them
        if self.patch is not None:
            lr, hr = self._random_patch(lr, hr)
        meta = SliceMeta(ref.name, vpos, s, ref.contrast, self.labels[ref.cls])
        return Sample(lr, hr, meta)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor view of ``a``; flipped (negative-stride) views are copied first."""
    return torch.from_numpy(a if all(st >= 0 for st in a.strides) else np.ascontiguousarray(a))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack with one single-threaded numpy copy, into shared memory inside a worker."""
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype)
    if get_worker_info() is not None:
        out.share_memory_()
    np.stack([t.numpy() for t in tensors], out=out.numpy())
    return out


def collate_samples(samples: list[Sample]) -> Sample:
    """Batch samples: ``lr``/``hr`` stacked, ``meta`` fields as lists (str) or tensors (int)."""
    metas = [s.meta for s in samples]
    meta = SliceMeta(
        volume=[m.volume for m in metas],
        volume_idx=torch.tensor([m.volume_idx for m in metas]),
        slice=torch.tensor([m.slice for m in metas]),
        contrast=[m.contrast for m in metas],
        label=torch.tensor([m.label for m in metas]),
    )
    return Sample(_stack([s.lr for s in samples]), _stack([s.hr for s in samples]), meta)
