"""Typed samples shared by every data module and stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torch import Tensor


class SliceMeta(NamedTuple):
    """Where a slice comes from. Collates to lists/tensors field by field."""

    volume: str  # volume name, e.g. "IXI002-Guys-0828-T1"
    volume_idx: int  # index of the volume in its split (unique per split)
    slice: int  # slice index along the slicing axis
    contrast: str  # "T1", "T2", "PD", "PDFS", "FLAIR"
    label: int  # class index of dataset/contrast (the ViT pretext target)


class Sample(NamedTuple):
    """A paired LR/HR slice, each shaped (1, H, W), on the per-volume normalised scale (>= 0)."""

    lr: Tensor
    hr: Tensor
    meta: SliceMeta


@dataclass(frozen=True)
class VolumeRef:
    """A volume on disk, before it is read."""

    path: Path
    name: str
    subject: str
    contrast: str
    cls: str  # dataset/contrast class name, e.g. "IXI-T1"
    reader: str  # "nifti" or "fastmri"
