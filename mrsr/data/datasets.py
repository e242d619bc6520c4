"""Slice datasets over a :class:`VolumeStore`: one index built once, volumes loaded lazily."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from mrsr.data.store import FOREGROUND, Slab, VolumeStore
from mrsr.data.types import Sample, SliceMeta, VolumeRef
from mrsr.errors import ConfigError


class View(NamedTuple):
    """Slices of a volume along ``axis`` (``None``: the store's axis), optionally of a slab."""

    ref: VolumeRef
    axis: int | None = None
    slab: Slab | None = None


@dataclass(frozen=True)
class Augment:
    """Training-patch augmentations, applied to the LR and HR patch alike.

    ``flips``: random horizontal and vertical flips; ``transpose``: random swap of the two
    in-plane axes (with the flips: all eight 90-degree rotations and reflections; these
    commute exactly with both degradations). ``intensity``: a random factor in
    ``[lo, hi]`` on both images (exact: the degradations are linear); ``gamma``: a random
    exponent in ``[lo, hi]`` (on the robust-maximum scale, for contrast changes between
    scanners; applied to both images, so approximate for the LR one).
    """

    flips: bool = True
    transpose: bool = False
    intensity: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, flips: bool, cfg: dict[str, Any] | None) -> Augment:
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"transpose", "intensity", "gamma"}
        if unknown:
            raise ConfigError(
                f"data.augment has unknown key(s) {sorted(unknown)}: "
                "use transpose, intensity, gamma"
            )

        def span(key: str) -> tuple[float, float] | None:
            v = cfg.get(key)
            if v is None:
                return None
            if not isinstance(v, Sequence) or len(v) != 2 or not 0 < float(v[0]) <= float(v[1]):
                raise ConfigError(
                    f"data.augment.{key}={v!r} is invalid: expected [lo, hi] with 0 < lo <= hi"
                )
            return (float(v[0]), float(v[1]))

        return cls(bool(flips), bool(cfg.get("transpose", False)), span("intensity"), span("gamma"))

    def __call__(self, lr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment one (1, h, w) LR/HR pair (numpy views where possible)."""
        if self.flips:
            if torch.rand(()) < 0.5:
                lr, hr = lr[..., ::-1], hr[..., ::-1]
            if torch.rand(()) < 0.5:
                lr, hr = lr[..., ::-1, :], hr[..., ::-1, :]
        if self.transpose and torch.rand(()) < 0.5:
            lr, hr = lr.swapaxes(-1, -2), hr.swapaxes(-1, -2)
        if self.gamma is not None:
            g = _log_uniform(*self.gamma)
            lr, hr = np.power(lr, g, dtype=np.float32), np.power(hr, g, dtype=np.float32)
        if self.intensity is not None:
            f = np.float32(_log_uniform(*self.intensity))
            lr, hr = lr * f, hr * f
        return lr, hr


def _log_uniform(lo: float, hi: float) -> float:
    """A random number in [lo, hi], uniform in log scale (so 0.5 and 2 are equally likely)."""
    if lo == hi:
        return lo
    return math.exp(math.log(lo) + float(torch.rand(())) * (math.log(hi) - math.log(lo)))


class SliceDataset(Dataset):
    """Paired LR/HR slices.

    ``index`` lists ``(view_position, slice)``, a view being a volume sliced along one axis
    (``refs[v]`` is view ``v``'s volume). For training, ``patch`` gives the HR patch size:
    a random crop aligned to the scale (zero-padded where the slice is smaller; up to
    ``patch_tries`` positions are drawn until the patch's foreground fraction reaches
    ``patch_foreground``), then ``augment``. For evaluation (``patch=None``) whole slices are
    returned.

    With a random operator (``store.operator.random``: the acquisition model, a mix) a training
    sample's LR is made on the fly from its whole HR slice (k-space is the whole field of view's)
    by ``operator.pair``, before the crop, with the sample's own seeded RNG (the resumable
    loader's ``(seed, epoch, position)``): every epoch sees a fresh acquisition, and a resumed
    run the same ones. Deterministic operators keep the store's LR.
    """

    def __init__(
        self,
        store: VolumeStore,
        views: Sequence[View | VolumeRef],
        index: list[tuple[int, int]],
        labels: dict[str, int],
        patch: int | None = None,
        augment: Augment | None = None,
        patch_foreground: float = 0.0,
        patch_tries: int = 1,
    ) -> None:
        self.store = store
        self.patch_foreground = float(patch_foreground)
        self.patch_tries = int(patch_tries)
        self.views = [v if isinstance(v, View) else View(v) for v in views]
        self.refs = [v.ref for v in self.views]
        self.index = index
        self.labels = labels
        self.patch = patch
        self.augment = augment
        scale = store.scale
        if patch is not None and patch % scale:
            raise ValueError(f"patch size {patch} does not divide by scale {scale}")

    def __len__(self) -> int:
        return len(self.index)

    def _random_patch(
        self, lr: torch.Tensor, hr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        # up to ``patch_tries`` random positions: the first whose LR patch has enough
        # foreground is kept (patches of pure background teach nothing), else the last one
        for _ in range(max(1, self.patch_tries)):
            top = int(torch.randint(0, h - p + 1, ()))
            left = int(torch.randint(0, w - p + 1, ()))
            lr_c = lr_a[..., top : top + p, left : left + p]
            if self.patch_foreground <= 0 or (lr_c > FOREGROUND).mean() >= self.patch_foreground:
                break
        lr_a = lr_c
        hr_a = hr_a[..., top * s : (top + p) * s, left * s : (left + p) * s]
        if self.augment is not None:
            lr_a, hr_a = self.augment(lr_a, hr_a)
        return _tensor(lr_a), _tensor(hr_a)

    def __getitem__(self, i: int) -> Sample:
        vpos, s = self.index[i]
        ref, axis, slab = self.views[vpos]
        operator = self.store.operator
        fresh = self.patch is not None and operator.random  # training LR made on the fly
        hr_vol, lr_vol = self.store.get(ref, axis, slab, lr=not fresh)
        hr = hr_vol[s]  # a view of the cached volume; collate copies it
        if fresh:
            lr, hr = operator.pair(hr[None], self.store.scale)
            lr, hr = lr[0].float().contiguous(), hr[0].float().contiguous()
        else:
            lr = lr_vol[s]
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
