"""Slice profiles: the sensitivity of one thick slice along the slice axis (Gaussian, boxcar or
measured) and ``throughplane.slice_profile``'s choice of one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrsr.errors import ConfigError, DataError

PROFILES = ("gaussian", "boxcar")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class SliceProfile:
    """The sensitivity of one thick slice along the slice axis, as a function of mm from its
    centre: a Gaussian of FWHM ``width``, a boxcar of ``width``, or measured ``samples`` taken
    every ``step`` mm (centred on their centroid, linearly interpolated, zero outside)."""

    kind: str
    width: float = 0.0
    samples: tuple[float, ...] = ()
    step: float = 0.0

    def __call__(self, mm: np.ndarray) -> np.ndarray:
        if self.kind == "gaussian":
            return np.exp(-0.5 * (mm / (self.width * FWHM_TO_SIGMA)) ** 2)
        if self.kind == "boxcar":
            return (np.abs(mm) <= self.width / 2).astype(np.float64)
        s = np.asarray(self.samples, dtype=np.float64)
        centroid = float((np.arange(s.size) * s).sum() / s.sum())  # the slice's position
        x = (np.arange(s.size) - centroid) * self.step
        return np.interp(mm, x, s, left=0.0, right=0.0)

    def describe(self) -> str:
        if self.kind == "measured":
            return f"measured ({len(self.samples)} samples every {self.step:g} mm)"
        return f"{self.kind} ({'FWHM' if self.kind == 'gaussian' else 'width'} {self.width:g} mm)"


def slice_profile(kind: str, thickness: float, step: float | None = None) -> SliceProfile:
    """``throughplane.slice_profile``: ``gaussian`` or ``boxcar`` of ``thickness`` mm, or the
    path of a measured profile (a text or ``.npy`` file of weights, one every ``step`` mm)."""
    if kind in PROFILES:
        if not thickness > 0:
            raise ConfigError(f"throughplane.slice_thickness={thickness} must be > 0 mm")
        return SliceProfile(kind, float(thickness))
    path = Path(kind).expanduser()
    if not path.suffix and not path.exists():
        raise ConfigError(
            f"throughplane.slice_profile={kind!r}: choose {' or '.join(PROFILES)}, "
            "or give a profile file"
        )
    if not path.is_file():
        raise DataError(path, "slice profile file not found")
    try:
        w = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a readable profile (text or .npy numbers): {err}") from err
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size < 2 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DataError(
            path,
            "a slice profile needs at least 2 finite, non-negative weights with a positive sum",
        )
    if step is None or not step > 0:
        raise ConfigError("throughplane.profile_step must be > 0 mm for a measured slice profile")
    return SliceProfile("measured", samples=tuple(float(v) for v in w), step=float(step))
