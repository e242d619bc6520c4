"""Thick slices simulated from a 1 mm volume independently of the stage's own operators, and the
ideal low-pass bound: how through-plane SR is measured without an inverse crime.

:func:`plain_thick` makes every ``r`` fine slices into one by a plain convolution sampled at the
fine voxel centres (or the mean of each group, for a boxcar), never by
:func:`mrsr.isotropic.operators.thick_sampling`, the stage's own matrix; it also makes slices
with profiles the stage does not model (:data:`UNMODELLED`). :func:`bandlimited` is the truth
with every frequency the thick slices could not hold removed: what a perfect deblurring gives.
"""

from __future__ import annotations

import math

import numpy as np

from mrsr.isotropic.profile import PROFILES, SliceProfile, slice_profile

# profiles the stage does not model (it knows Gaussian and boxcar): a triangle of FWHM r voxels,
# and a boxcar of r voxels with soft edges (convolved with a Gaussian of FWHM r / 2), the shape
# of a real slice-selective excitation
UNMODELLED = ("triangle", "softbox")
SIMULATED = (*PROFILES, *UNMODELLED)  # every profile :func:`plain_thick` makes slices with


def plain_kernel(profile: str, r: int, offsets: np.ndarray) -> np.ndarray:
    """The weight of a fine slice ``offsets`` voxels from a thick slice's centre (not normalised):
    a Gaussian of FWHM ``r``, or one of :data:`UNMODELLED`."""
    sigma = r / (2 * np.sqrt(2 * np.log(2)))
    if profile == "gaussian":
        return np.exp(-0.5 * (offsets / sigma) ** 2)
    if profile == "triangle":
        return np.maximum(0.0, 1.0 - np.abs(offsets) / r)
    if profile == "softbox":
        erf = np.vectorize(math.erf)
        edge = sigma / 2 * np.sqrt(2)  # the edges' Gaussian (FWHM r / 2), scaled for erf
        return 0.5 * (erf((offsets + r / 2) / edge) - erf((offsets - r / 2) / edge))
    raise ValueError(f"unknown profile {profile!r}: {', '.join(SIMULATED)}")


def plain_profile(profile: str, spacing: float, voxel: float) -> SliceProfile:
    """``profile`` (FWHM or width = ``spacing``) as a :class:`SliceProfile` for the stage's
    operators: the stage's own for Gaussian and boxcar, else the plain kernel measured every
    eighth of a voxel."""
    if profile in PROFILES:
        return slice_profile(profile, spacing)
    r = spacing / voxel
    offsets = np.arange(-4 * r, 4 * r + 1e-9, 0.125)
    return SliceProfile(
        "measured", samples=tuple(plain_kernel(profile, r, offsets)), step=voxel / 8
    )


def plain_thick(fine: np.ndarray, r: int, profile: str) -> np.ndarray:
    """Every ``r`` fine slices (axis 0, a multiple of ``r`` of them) made into one, independently of
    the stage's operators: ``boxcar`` is the mean of each group of ``r`` consecutive slices;
    ``gaussian`` (FWHM ``r`` voxels) and the :data:`UNMODELLED` profiles a 1D convolution with the
    kernel sampled at the fine voxel centres (edges mirrored), taken at each group's centre (the
    same grid as the boxcar's)."""
    n = fine.shape[0] - fine.shape[0] % r
    x = np.asarray(fine[:n], dtype=np.float64)
    if profile == "boxcar":
        return x.reshape(n // r, r, *x.shape[1:]).mean(1).astype(np.float32)
    sigma = r / (2 * np.sqrt(2 * np.log(2)))
    half = int(np.ceil(4 * sigma))
    # fine centres around a group centre (half-integer for even r)
    offsets = np.arange(-half, half) + 0.5
    if r % 2:
        offsets = np.arange(-half, half + 1).astype(np.float64)
    kernel = plain_kernel(profile, r, offsets)
    kernel /= kernel.sum()
    pad = half + r
    padded = np.pad(x, [(pad, pad)] + [(0, 0)] * (x.ndim - 1), mode="reflect")
    centres = (np.arange(n // r) + 0.5) * r - 0.5
    out = np.zeros((n // r, *x.shape[1:]))
    for w, d in zip(kernel, offsets, strict=True):
        out += w * padded[(centres + d).astype(np.int64) + pad]
    return out.astype(np.float32)


def bandlimited(ref: np.ndarray, axis: int, voxel: float, spacing: float) -> np.ndarray:
    """``ref`` with every frequency along ``axis`` above the thick Nyquist ``1 / (2 spacing)``
    removed (an ideal low-pass): what a perfect deblurring of the thick slices gives, with
    nothing the slices could not hold. SR above it has predicted detail beyond the slices."""
    n = ref.shape[axis]
    keep = np.fft.rfftfreq(n, voxel) <= 1 / (2 * spacing)
    shape = [1] * ref.ndim
    shape[axis] = -1
    spectrum = np.fft.rfft(np.asarray(ref, dtype=np.float64), axis=axis)
    return np.fft.irfft(spectrum * keep.reshape(shape), n=n, axis=axis)
