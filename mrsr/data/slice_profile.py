"""One-axis operators of through-plane SR: slice profiles, thick-slice sampling, cubic splines.

Every operator acts along one axis of an image and is a matrix (``out = M @ x`` along that
axis), so the simulation used for training and the interpolation used on the scan are the
same linear maps on CPU and GPU.

Grids are cell-centred: ``n`` voxels of size ``step`` tile a field of view of ``n * step``
mm, and a grid re-sampled to another step covers the same field of view, centred on it (the
convention of :func:`mrsr.tasks.predict.upsampled_affine`; with an integer ratio ``r`` fine
voxel ``j`` sits at coarse index ``(j + 0.5) / r - 0.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrsr.errors import ConfigError, DataError

PROFILES = ("gaussian", "boxcar")
SUBSAMPLES = 32  # points per voxel when integrating a profile over a voxel
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class Grid:
    """A re-sampled grid: ``n`` voxels whose centres sit at ``offset + slope * j`` in the
    voxel index of the grid it was made from."""

    n: int
    offset: float
    slope: float

    @property
    def positions(self) -> np.ndarray:
        return self.offset + self.slope * np.arange(self.n)


def resampled_grid(n_in: int, step_in: float, step_out: float) -> Grid:
    """The grid of voxel size ``step_out`` over the field of view of ``n_in`` voxels of
    ``step_in`` (``round(n_in * step_in / step_out)`` voxels, centred on the same field)."""
    n_out = max(1, int(round(n_in * step_in / step_out)))
    slope = step_out / step_in
    offset = (0.5 * step_out - n_out * step_out / 2) / step_in + n_in / 2 - 0.5
    return Grid(n_out, offset, slope)


# -- slice profiles --------------------------------------------------------------------------

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
        raise ConfigError(f"throughplane.slice_profile={kind!r}: choose {' or '.join(PROFILES)}, or give a profile file")
    if not path.is_file():
        raise DataError(path, "slice profile file not found")
    try:
        w = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a readable profile (text or .npy numbers): {err}") from err
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size < 2 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DataError(path, "a slice profile needs at least 2 finite, non-negative weights with a positive sum")
    if step is None or not step > 0:
        raise ConfigError("throughplane.profile_step must be > 0 mm for a measured slice profile")
    return SliceProfile("measured", samples=tuple(float(v) for v in w), step=float(step))


# -- one-axis operators ----------------------------------------------------------------------

def sampling_matrix(n: int, voxel: float, thick: Grid, profile: SliceProfile) -> np.ndarray:
    """The (thick.n, n) matrix that turns ``n`` voxels of ``voxel`` mm into the slices centred at
    ``thick``'s positions (in voxel index) acquired with ``profile``: each row is the profile
    integrated over the voxels, normalised to sum 1."""
    sub = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5  # sub-voxel offsets
    fine = (np.arange(n)[:, None] + sub[None, :]).ravel()  # (n * SUBSAMPLES,)
    rows = profile((fine[None, :] - thick.positions[:, None]) * voxel)
    m = rows.reshape(thick.n, n, SUBSAMPLES).sum(-1)
    total = m.sum(1, keepdims=True)
    if (total <= 0).any():
        raise ConfigError(f"the slice profile {profile.describe()} is too narrow to sample {voxel:g} mm voxels")
    return m / total


def thick_sampling(n: int, voxel: float, spacing: float, profile: SliceProfile) -> tuple[np.ndarray, Grid]:
    """Thick slices every ``spacing`` mm over the field of view of ``n`` voxels of ``voxel`` mm
    (centred): the sampling matrix and the thick grid in the fine voxel index."""
    thick = resampled_grid(n, voxel, spacing)
    return sampling_matrix(n, voxel, thick, profile), thick


def inverse(grid: Grid, n: int) -> Grid:
    """The ``n`` voxels of the grid's source, in the grid's own index."""
    return Grid(n, -grid.offset / grid.slope, 1.0 / grid.slope)


def thick_axis_operator(h: int, voxel: float, spacing: float, profile: SliceProfile) -> tuple[slice, np.ndarray]:
    """What acquiring thick slices and interpolating them back does along an axis of ``h``
    voxels, with the same sampling phase as the scan's thick axis at inference.

    At inference ``n_thick`` slices are interpolated onto ``resampled_grid(n_thick, spacing,
    voxel)``; here ``n_thick = floor(h · voxel / spacing)`` slices are simulated at the positions
    that grid gives them, on the centred ``n_fine`` voxels it spans. Returns those voxels (a
    slice of the axis) and the (n_fine, n_fine) matrix: sampling, then cubic spline.
    """
    n_thick = int(np.floor(h * voxel / spacing + 1e-9))
    fine = resampled_grid(n_thick, spacing, voxel)  # the inference grid, in thick index
    start = (h - fine.n) // 2
    thick = inverse(fine, n_thick)  # thick centres in fine index
    up = spline_matrix(n_thick, fine.positions)
    return slice(start, start + fine.n), up @ sampling_matrix(fine.n, voxel, thick, profile)


def _bspline3(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx > n - 1, period - idx, idx)


def spline_matrix(n: int, positions: np.ndarray) -> np.ndarray:
    """The (len(positions), n) matrix of cubic B-spline interpolation of ``n`` samples at
    ``positions`` (in sample index; mirror boundary, as ``scipy.ndimage`` ``mode="mirror"``).
    It reproduces the samples at integer positions."""
    positions = np.asarray(positions, dtype=np.float64)
    prefilter = np.diag(np.full(n, 4 / 6))  # samples = prefilter @ coefficients
    for k in range(n):
        for m in (k - 1, k + 1):
            prefilter[k, _mirror(np.array(m), n)] += 1 / 6
    base = np.floor(positions).astype(np.int64)
    basis = np.zeros((positions.size, n))
    for d in (-1, 0, 1, 2):
        m = base + d
        np.add.at(basis, (np.arange(positions.size), _mirror(m, n)), _bspline3(positions - m))
    return basis @ np.linalg.inv(prefilter)


def along(x: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """``matrix`` applied along ``axis`` of ``x`` (float32 result)."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    out = np.tensordot(matrix, moved, axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(np.float32)
