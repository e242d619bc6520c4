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
from mrsr.ops import check_scale as check_scale  # re-exported: defined in mrsr.ops
from mrsr.ops import lr_band

DEGRADATIONS = ("bicubic", "kspace")


def crop_to_multiple(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Centre-crop the last two axes so both divide by ``scale``."""
    h, w = x.shape[-2:]
    nh, nw = h - h % scale, w - w % scale
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic down-sampling in image space (the paper's protocol)."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(
        hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    )
    return lr.clamp_(min=0.0)


def _truncate_axis(x: torch.Tensor, dim: int, scale: int) -> torch.Tensor:
    """One axis of :func:`kspace_truncate`: the low ``n/scale`` frequencies of ``x`` along
    ``dim``, sampled on the LR grid (LR pixel ``m`` centred at HR ``m*scale + (scale-1)/2``)."""
    n = x.shape[dim]
    m = n // scale
    spec = torch.fft.fft(x, dim=dim, norm="forward")
    freq, phase = lr_band(m, scale, x.device)  # n == m * scale (degrade checks it)
    view = [1] * x.ndim
    view[dim] = m
    out = spec.index_select(dim, freq % n) * phase.view(view)
    if m % 2 == 0:  # the LR Nyquist bin: half of each HR bin +-m/2 (a symmetric, real filter)
        nyq = torch.tensor([m // 2], device=x.device)  # holds HR bin -m/2 (freq[m // 2] = -m/2)
        plus = spec.index_select(dim, nyq % n) * phase[m // 2].conj()  # HR bin +m/2, opposite ramp
        out = out.index_copy(dim, nyq, 0.5 * (plus + out.index_select(dim, nyq)))
    return torch.fft.ifft(out, dim=dim, norm="forward")


def kspace_lowpass(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The complex LR image of :func:`kspace_truncate` before the magnitude (float64; a complex
    ``hr`` keeps its phase)."""
    x = hr.to(torch.complex128) if hr.is_complex() else hr.double()
    for dim in (-2, -1):
        x = _truncate_axis(x, dim, scale)
    return x


def kspace_truncate(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Keep the central 1/scale of the 2D spectrum (how a scanner loses resolution) and
    return the magnitude image on the LR grid.

    The LR image is sampled where every other function of the package puts LR pixels (pixel
    ``m`` at HR position ``m*scale + (scale-1)/2``, as ``align_corners=False``), by a
    half-pixel phase ramp before the crop; the LR Nyquist bin takes half of each of the two
    HR bins that fold onto it, so the filter is real and symmetric and the degradation
    commutes with flips and transposes. ``norm="forward"`` keeps the mean intensity of the
    complex image; the magnitude adds the rectified ringing (+0.3 % at x2 on a brain slice).
    """
    return kspace_lowpass(hr, scale).abs().to(hr.dtype)


def degrade(hr: torch.Tensor, scale: int, kind: str = "bicubic") -> torch.Tensor:
    """Simulate the LR image of ``hr`` (whose size must divide by ``scale``)."""
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ConfigError(f"HR size {tuple(hr.shape[-2:])} does not divide by scale {scale}")
    if kind == "bicubic":
        return bicubic_down(hr, scale)
    if kind == "kspace":
        return kspace_truncate(hr, scale)
    raise ConfigError(
        f"data.degradation={kind!r} is unknown: choose one of {', '.join(DEGRADATIONS)}"
    )


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
    return normalise_with_range(vol, percentile)[0]


def normalise_with_range(
    vol: np.ndarray, percentile: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """:func:`normalise_volume` and the ``(lo, hi)`` it used (to map results back), with one
    percentile pass over the volume."""
    lo, hi = intensity_range(vol, percentile)
    return (vol.astype(np.float32) - lo) / np.float32(max(hi - lo, 1e-12)), lo, hi
