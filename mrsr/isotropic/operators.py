"""One-axis operators of through-plane SR: thick-slice sampling with a slice profile, cubic splines.

Every operator acts along one axis of an image and is a matrix (``out = M @ x`` along that
axis), so the simulation used for training and the interpolation used on the scan are the
same linear maps on CPU and GPU. Positions are on the cell-centred grids of
:mod:`mrsr.isotropic.geometry`.
"""

from __future__ import annotations

import numpy as np

from mrsr.errors import ConfigError
from mrsr.isotropic.geometry import Grid, inverse, resampled_grid
from mrsr.isotropic.profile import SliceProfile

SUBSAMPLES = 32  # points per voxel when integrating a profile over a voxel


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
        raise ConfigError(
            f"the slice profile {profile.describe()} is too narrow to sample {voxel:g} mm voxels"
        )
    return m / total


def thick_sampling(
    n: int, voxel: float, spacing: float, profile: SliceProfile
) -> tuple[np.ndarray, Grid]:
    """Thick slices every ``spacing`` mm over the field of view of ``n`` voxels of ``voxel`` mm
    (centred): the sampling matrix and the thick grid in the fine voxel index."""
    thick = resampled_grid(n, voxel, spacing)
    return sampling_matrix(n, voxel, thick, profile), thick


def fine_sampling(fine: Grid, n_thick: int, voxel: float, profile: SliceProfile) -> np.ndarray:
    """The (n_thick, fine.n) matrix that acquires ``n_thick`` thick slices from the voxels of
    ``fine`` (a working grid in thick index, :func:`resampled_grid`): each slice's profile,
    centred where the grid puts it, integrated over the voxels."""
    return sampling_matrix(fine.n, voxel, inverse(fine, n_thick), profile)


def thick_axis_operator(
    h: int, voxel: float, spacing: float, profile: SliceProfile
) -> tuple[slice, np.ndarray]:
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
    up = spline_matrix(n_thick, fine.positions)
    return slice(start, start + fine.n), up @ fine_sampling(fine, n_thick, voxel, profile)


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


def cubic_along(volume: np.ndarray, axis: int, grid: Grid) -> np.ndarray:
    """Cubic-spline interpolation of ``volume`` along ``axis`` at ``grid``'s positions."""
    return along(volume, spline_matrix(volume.shape[axis], grid.positions), axis)
