"""Slice datasets over a :class:`VolumeStore`: one index built once, volumes loaded lazily."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

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
        s, p = self.store.scale, self.patch // self.store.scale
        h, w = lr.shape[-2:]
        if h < p or w < p:
            pad_h, pad_w = max(0, p - h), max(0, p - w)
            lr = F.pad(lr, (0, pad_w, 0, pad_h))
            hr = F.pad(hr, (0, pad_w * s, 0, pad_h * s))
            h, w = lr.shape[-2:]
        top = int(torch.randint(0, h - p + 1, ()))
        left = int(torch.randint(0, w - p + 1, ()))
        lr = lr[..., top : top + p, left : left + p]
        hr = hr[..., top * s : (top + p) * s, left * s : (left + p) * s]
        if self.flips:
            if torch.rand(()) < 0.5:
                lr, hr = lr.flip(-1), hr.flip(-1)
            if torch.rand(()) < 0.5:
                lr, hr = lr.flip(-2), hr.flip(-2)
        return lr, hr

    def __getitem__(self, i: int) -> Sample:
        vpos, s = self.index[i]
        ref = self.refs[vpos]
        hr_vol, lr_vol = self.store.get(ref)
        hr, lr = hr_vol[s], lr_vol[s]
        if self.patch is not None:
            lr, hr = self._random_patch(lr, hr)
        meta = SliceMeta(ref.name, vpos, s, ref.contrast, self.labels[ref.cls])
        return Sample(lr.contiguous(), hr.contiguous(), meta)
