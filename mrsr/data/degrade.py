"""Deterministic LR simulation, intensity normalisation and interpolation helpers.

All functions work on float tensors shaped (N, 1, H, W) on the per-volume normalised scale:
0 is the volume's minimum and 1 its robust maximum (a foreground percentile). Nothing is
clipped at the top: voxels brighter than the percentile keep values above 1, so no
structure is flattened. Only the lower bound 0 is enforced where an operation can
undershoot it (interpolation ringing), since a magnitude image has nothing below it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mrsr.errors import ConfigError

DEGRADATIONS = ("bicubic", "kspace")


def check_scale(scale: int) -> int:
    if scale not in (2, 4):
        raise ConfigError(f"scale={scale} is not supported: use 2 or 4")
    return int(scale)


def crop_to_multiple(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Centre-crop the last two axes so both divide by ``scale``."""
    h, w = x.shape[-2:]
    nh, nw = h - h % scale, w - w % scale
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic down-sampling in image space (the paper's protocol)."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(min=0.0)


def kspace_truncate(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Keep the central 1/scale of the 2D spectrum (how a scanner loses resolution).

    Uses ``norm="forward"`` on both transforms so mean intensity is preserved.
    """
    h, w = hr.shape[-2:]
    lh, lw = h // scale, w // scale
    spec = torch.fft.fftshift(torch.fft.fft2(hr.double(), norm="forward"), dim=(-2, -1))
    top, left = h // 2 - lh // 2, w // 2 - lw // 2
    spec = spec[..., top : top + lh, left : left + lw]
    lr = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="forward").abs()
    return lr.to(hr.dtype)


def degrade(hr: torch.Tensor, scale: int, kind: str = "bicubic") -> torch.Tensor:
    """Simulate the LR image of ``hr`` (whose size must divide by ``scale``)."""
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ConfigError(f"HR size {tuple(hr.shape[-2:])} does not divide by scale {scale}")
    if kind == "bicubic":
        return bicubic_down(hr, scale)
    if kind == "kspace":
        return kspace_truncate(hr, scale)
    raise ConfigError(f"data.degradation={kind!r} is unknown: choose one of {', '.join(DEGRADATIONS)}")


def upsample(lr: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolation baseline: nearest, bilinear or bicubic up-sampling (ringing below 0 removed)."""
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(lr, scale_factor=scale, mode=mode, **kwargs).clamp(min=0.0)


def intensity_range(vol: np.ndarray, percentile: float = 99.5) -> tuple[float, float]:
    """The ``(lo, hi)`` that :func:`normalise_volume` maps to 0 and 1."""
    lo = float(vol.min())
    fg = vol[vol > lo]
    hi = float(np.percentile(fg, percentile)) if fg.size else lo
    if hi <= lo:
        hi = float(vol.max())
    return lo, hi


def normalise_volume(vol: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Per-volume linear intensity normalisation, nothing clipped.

    ``(v - min) / (p - min)`` with ``p`` the given percentile of the voxels above the
    minimum (the foreground). Background maps to 0, the percentile to 1, and the
    brightest voxels keep values above 1 (exactly invertible with :func:`intensity_range`).
    """
    lo, hi = intensity_range(vol, percentile)
    return (vol.astype(np.float32) - lo) / np.float32(max(hi - lo, 1e-12))
