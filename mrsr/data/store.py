"""Volumes read once, normalised, cropped and degraded, then kept in memory."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mrsr.data.acquisition import Degradation, as_degradation
from mrsr.data.degrade import crop_to_multiple, normalise_volume
from mrsr.data.readers import read_fastmri, read_nifti_canonical
from mrsr.data.types import VolumeRef
from mrsr.files import atomic_write_bytes

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # bump when preprocessing changes meaning (3: k-space LR on the image grid)
EVAL_SEED = 20261206  # the draws of a random operator's evaluation LR (with the volume and slice)


def center_crop_nd(vol: np.ndarray, crop: Sequence[int | None] | None) -> np.ndarray:
    """Centre crop each axis to ``min(size, crop)``; ``None`` keeps an axis whole."""
    if crop is None:
        return vol
    index = []
    for size, want in zip(vol.shape, crop, strict=True):
        keep = size if want is None else min(size, int(want))
        start = (size - keep) // 2
        index.append(slice(start, start + keep))
    return vol[tuple(index)]


# Part of a volume along the store's slicing axis: ``(lo, hi, margin)`` keeps the slices in
# [lo * n, hi * n) (fractions of the n slices), less ``margin`` slices on each side that
# borders another part (a fraction of 0 or 1 has no neighbour there).
Slab = tuple[float, float, int]


def slab_range(n: int, slab: Slab) -> slice:
    """The slices of an ``n``-slice axis that ``slab`` keeps."""
    lo, hi, margin = slab
    start = int(lo * n) + (margin if lo > 0 else 0)
    stop = int(hi * n) - (margin if hi < 1 else 0)
    return slice(start, max(start, stop))


class VolumeStore:
    """Turns a :class:`VolumeRef` into cached ``(hr, lr)`` tensors shaped (S, 1, H, W).

    Preprocessing, in order: read (NIfTI reoriented to RAS+; fastMRI from its stored
    reconstruction or from k-space), per-volume linear normalisation (robust maximum to 1,
    nothing clipped), centre crop (``crop`` is per RAS axis for NIfTI, ``[H, W]`` in-plane for
    fastMRI), slicing along ``axis``, in-plane crop to a multiple of the scale, then the LR
    degradation of every slice (``degradation``: an operator of :mod:`mrsr.data.acquisition` or
    its name). A random operator's LR is drawn once per slice from a seed of the volume's name,
    the view and the slice, when first asked for, so validation and test are deterministic;
    training makes its LR on the fly instead (:class:`~mrsr.data.datasets.SliceDataset`) and
    never draws these; only the HR of such views is cached on disk. ``max_volumes`` bounds
    memory (least recently used volumes are dropped).

    With ``cache_dir`` the preprocessed pair is also kept on disk as ``<key>.npz``, the key
    hashing the file's path, size and modification time with every preprocessing setting:
    a changed file or setting gives a new key, so stale entries are never used. Data
    folders are only read.
    """

    def __init__(
        self,
        scale: int,
        degradation: Degradation | str = "bicubic",
        axis: int = 2,
        crop: Sequence[int | None] | None = None,
        percentile: float = 99.5,
        fastmri_source: str = "auto",
        fastmri_crop: Sequence[int] = (320, 320),
        max_volumes: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.scale = scale
        self.operator = as_degradation(degradation)
        self.degradation = self.operator.name
        self.axis = axis
        self.crop = crop
        self.percentile = percentile
        self.fastmri_source = fastmri_source
        self.fastmri_crop = tuple(fastmri_crop)
        self.max_volumes = max_volumes
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def read_slices(
        self, ref: VolumeRef, axis: int | None = None, slab: Slab | None = None
    ) -> np.ndarray:
        """Normalised, cropped volume as (slices, H, W) float32, sliced along ``axis``.

        ``slab`` keeps part of the volume along the store's own slicing axis before the
        volume is resliced (see :data:`Slab`); normalisation always uses the whole volume.
        """
        axis = self.axis if axis is None else axis
        if ref.reader == "fastmri":
            vol = normalise_volume(
                read_fastmri(ref.path, self.fastmri_source, self.fastmri_crop), self.percentile
            )
            vol = np.moveaxis(vol, 0, self.axis)  # stored slices-first; self.axis is 0 by default
        else:
            vol = center_crop_nd(
                normalise_volume(read_nifti_canonical(ref.path), self.percentile), self.crop
            )
        if slab is not None:
            index = [slice(None)] * vol.ndim
            index[self.axis] = slab_range(vol.shape[self.axis], slab)
            vol = vol[tuple(index)]
        return np.moveaxis(vol, axis, 0)

    def _build(
        self, ref: VolumeRef, axis: int, slab: Slab | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hr, lr)`` of a view; a random operator's ``lr`` is None (made when asked for)."""
        hr = torch.from_numpy(np.ascontiguousarray(self.read_slices(ref, axis, slab)))[:, None]
        hr = crop_to_multiple(hr, self.scale).contiguous()
        n, _, h, w = hr.shape
        if n == 0 or h == 0 or w == 0:  # a slab too thin to slice across: an empty view
            return hr, hr.new_zeros((n, 1, h // self.scale, w // self.scale))
        if self.operator.random:
            return hr, None
        lr = torch.cat([self.operator(chunk, self.scale) for chunk in hr.split(64)])
        return hr, lr.contiguous()

    def _drawn_lr(self, ref: VolumeRef, axis: int, slab: Slab | None, hr: torch.Tensor):
        """A random operator's LR of a view, each slice drawn from its own fixed seed."""
        view = zlib.crc32(f"{ref.name}|{axis}|{slab}".encode())
        lr = [
            self.operator(hr[i : i + 1], self.scale, torch.Generator().manual_seed(_seed(view, i)))
            for i in range(hr.shape[0])
        ]
        return torch.cat(lr).contiguous()

    def disk_key(self, ref: VolumeRef, axis: int | None = None, slab: Slab | None = None) -> str:
        """Hash of the file's identity (path, size, mtime) and of the preprocessing."""
        st = ref.path.stat()
        ident = {
            "path": str(ref.path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "settings": [
                self.scale,
                self.degradation if not self.operator.random else self.operator.describe(),
                self.axis,
                self.crop and list(self.crop),
                self.percentile,
                self.fastmri_source,
                list(self.fastmri_crop),
                ref.reader,
            ],
            "view": [self.axis if axis is None else axis, slab and list(slab)],
            "version": CACHE_VERSION,
        }
        return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def _load_or_build(
        self, ref: VolumeRef, axis: int, slab: Slab | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache_dir is None:
            return self._build(ref, axis, slab)
        path = self.cache_dir / f"{self.disk_key(ref, axis, slab)}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    lr = None if self.operator.random else torch.from_numpy(z["lr"])
                    return torch.from_numpy(z["hr"]), lr
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                log.warning("rebuilding unreadable cache entry %s", path)
        hr, lr = self._build(ref, axis, slab)
        buf = io.BytesIO()
        np.savez(buf, hr=hr.numpy(), **({} if lr is None else {"lr": lr.numpy()}))
        atomic_write_bytes(path, buf.getvalue())
        return hr, lr

    def get(
        self, ref: VolumeRef, axis: int | None = None, slab: Slab | None = None, lr: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hr, lr)`` slices of ``ref`` along ``axis`` (default: the store's), optionally of a
        slab. ``lr=False``: the HR is what is needed, so a random operator's LR (None then, if
        not made yet) is not drawn: training views make theirs on the fly."""
        axis = self.axis if axis is None else int(axis)
        key = f"{ref.path}|{axis}|{slab}"
        if key in self._cache:
            self._cache.move_to_end(key)
            pair = self._cache[key]
        else:
            pair = self._load_or_build(ref, axis, slab)
        if lr and pair[1] is None:
            pair = (pair[0], self._drawn_lr(ref, axis, slab, pair[0]))
        self._cache[key] = pair
        if self.max_volumes is not None:
            while len(self._cache) > self.max_volumes:
                self._cache.popitem(last=False)
        return pair


def _seed(view: int, index: int) -> int:
    """The seed of slice ``index`` of a view's evaluation LR."""
    return (EVAL_SEED * 1_000_003 + view * 65_537 + index) % (2**63 - 1)


FOREGROUND = 0.05  # normalised intensity above which a voxel counts as foreground


def foreground_slices(
    hr: torch.Tensor, min_fraction: float, threshold: float = FOREGROUND
) -> list[int]:
    """Slices whose fraction of voxels above ``threshold`` is at least ``min_fraction``."""
    frac = (hr > threshold).flatten(1).float().mean(1)
    return [int(i) for i in torch.nonzero(frac >= min_fraction).flatten()]
