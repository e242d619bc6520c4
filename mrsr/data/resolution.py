"""What resolution an image really holds: the spectral cut-off of each in-plane axis.

Many scanners zero-fill k-space before export (a 256 matrix written as 512): the image is then
an interpolation whose spectrum ends well below the grid's Nyquist frequency. Super-resolving
it sharpens an interpolation; super-resolving the acquired matrix is what is meant.

:func:`spectral_cutoff` averages each axis's 1D power spectrum over the slices and finds the
cliff: the frequency below which the power is, on a log scale, far above the power beyond it
(zero-filling leaves nothing but the magnitude's leakage there: 0.5 to 13 decades lower on brain
volumes zero-filled by 2 or 4, with and without noise). An acquired image decays smoothly into
its noise floor and has no such cliff (its largest local step is about 0.1 decade): its cut-off
is the grid's Nyquist (1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mrsr.data.degrade import intensity_range

CLIFF_DECADES = 0.25  # drop (log10 power, above the local trend) that makes a cliff
INTERPOLATED_BELOW = 0.85  # a cut-off under this fraction of Nyquist: the image is interpolated


@dataclass(frozen=True)
class Cutoff:
    """The cut-off of one axis, as a fraction of the grid's Nyquist frequency (1: none found),
    and the drop across it (decades of power)."""

    fraction: float
    drop: float

    @property
    def interpolated(self) -> bool:
        return self.fraction < INTERPOLATED_BELOW

    @property
    def factor(self) -> int | None:
        """The whole zero-filling factor it suggests: 1 when acquired at this grid, ``q >= 2``
        when the cut-off is within 8 % of ``1/q``, None for an interpolation by another rule."""
        if not self.interpolated:
            return 1
        q = round(1.0 / self.fraction)
        return q if q >= 2 and abs(self.fraction * q - 1.0) < 0.08 else None


def _power(slices: torch.Tensor, dim: int) -> np.ndarray:
    """Mean power of each |frequency| (0 .. n/2) along ``dim`` of (S, H, W) slices."""
    x = slices - slices.mean(dim=dim, keepdim=True)
    spec = torch.fft.rfft(x, dim=dim, norm="forward").abs().pow(2)
    other = [d for d in range(spec.ndim) if d != (dim % spec.ndim)]
    return spec.mean(dim=other).numpy()


def axis_cutoff(power: np.ndarray) -> Cutoff:
    """The cliff of a 1D power profile ``power[0 .. n/2]`` (see the module docstring): the
    largest drop of log10 power across two bins, above the local trend (the median drop of the
    bins around it), searched from 0.2 to 0.95 of Nyquist."""
    n = len(power) - 1
    if n < 24:
        return Cutoff(1.0, 0.0)
    logp = np.log10(np.maximum(power, 1e-30))
    step = logp[:-2] - logp[2:]  # step[k - 1]: the drop from bin k - 1 to bin k + 1
    best, where = 0.0, n
    for k in range(max(3, int(0.2 * n)), int(0.95 * n)):
        around = np.r_[step[max(0, k - 11) : k - 3], step[k + 2 : k + 10]]
        excess = step[k - 1] - (float(np.median(around)) if around.size else 0.0)
        # and what lies beyond stays below what lies before (a cliff, not a dip or a notch)
        beyond = float(np.percentile(logp[k + 1 :], 75)) if k + 1 <= n else logp[-1]
        excess = min(excess, float(logp[max(0, k - 4) : k].mean()) - beyond)
        if excess > best:
            best, where = excess, k
    if best < CLIFF_DECADES:
        return Cutoff(1.0, float(best))
    return Cutoff(float(where / n), float(best))


MAX_SLICES = 64  # slices the estimate averages over (evenly spaced), bounding time and memory


def spectral_cutoff(slices: np.ndarray, foreground: float = 0.05) -> tuple[Cutoff, Cutoff]:
    """The cut-off of each in-plane axis of ``slices`` (S, H, W), in any intensity units: at most
    :data:`MAX_SLICES` evenly spaced slices are taken and normalised together (their minimum to
    0, the 99.5th percentile above it to 1), and those with less than ``foreground`` of their
    pixels above 0.05 are left out (all are kept when none has that much)."""
    pick = np.linspace(0, len(slices) - 1, min(len(slices), MAX_SLICES)).round().astype(int)
    sample = np.asarray(slices[pick], dtype=np.float32)
    lo, hi = intensity_range(sample)
    x = torch.from_numpy((sample - lo) / np.float32(max(hi - lo, 1e-12))).double()
    keep = (x > 0.05).flatten(1).float().mean(1) >= foreground
    if bool(keep.any()):
        x = x[keep]
    return axis_cutoff(_power(x, 1)), axis_cutoff(_power(x, 2))


def describe(cutoffs: tuple[Cutoff, Cutoff], shape: tuple[int, int]) -> str:
    """A line for the log: the cut-offs and the acquired matrix they suggest."""
    acquired = [math.floor(n * c.fraction) for n, c in zip(shape, cutoffs, strict=True)]
    return (
        f"spectrum ends at {cutoffs[0].fraction:.2f} / {cutoffs[1].fraction:.2f} of the grid's "
        f"Nyquist (acquired matrix about {acquired[0]} x {acquired[1]} on a "
        f"{shape[0]} x {shape[1]} grid)"
    )
