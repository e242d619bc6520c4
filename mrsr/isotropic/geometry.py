"""Geometry of a thick-slice scan: re-sampled grids along the thick axis, which axis is thick
(and whether through-plane SR can restore it), and the affine of a re-sampled grid.

Grids are cell-centred: ``n`` voxels of size ``step`` tile a field of view of ``n * step``
mm, and a grid re-sampled to another step covers the same field of view, centred on it (the
convention of :func:`mrsr.inference.upsampled_affine`; with an integer ratio ``r`` fine
voxel ``j`` sits at coarse index ``(j + 0.5) / r - 0.5``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrsr.data.geometry import THICK_RATIO, is_square, thick_axis, two_thick_axes
from mrsr.errors import ConfigError

MIN_RATIO = THICK_RATIO  # slice spacing / in-plane voxel size below which there is nothing to do
MAX_RATIO = 8.0  # above it the slices hold too little to restore
MIN_SLICES = 8  # in-plane slices (along the thick axis) needed to learn from
MIN_INPLANE = 16  # in-plane voxels needed along each in-plane axis
MIN_THICK_SPAN = (
    4  # thick slices an in-plane axis must span (training degrades it like the thick axis)
)


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


def inverse(grid: Grid, n: int) -> Grid:
    """The ``n`` voxels of the grid's source, in the grid's own index."""
    return Grid(n, -grid.offset / grid.slope, 1.0 / grid.slope)


@dataclass(frozen=True)
class ThickGeometry:
    """Which axis is thick, and the voxel sizes (mm) that matter."""

    axis: int
    inplane: tuple[int, int]
    voxel: float  # in-plane voxel size
    spacing: float  # slice spacing (voxel size along ``axis``)
    n_thick: int

    @property
    def ratio(self) -> float:
        return self.spacing / self.voxel

    def fine_grid(self) -> Grid:
        """The working grid along the thick axis: the in-plane voxel size, in thick index."""
        return resampled_grid(self.n_thick, self.spacing, self.voxel)

    def output_grid(self, spacing: float | None) -> Grid:
        return resampled_grid(self.n_thick, self.spacing, spacing or self.voxel)


def thick_geometry(
    zooms: tuple[float, ...], shape: tuple[int, ...], axis: int | None = None
) -> ThickGeometry:
    """The thick axis (``axis`` or the largest voxel size) and its ratio to the in-plane size;
    an isotropic scan or non-square in-plane voxels are refused."""
    zooms = tuple(float(z) for z in zooms[:3])
    sizes = " x ".join(f"{z:g}" for z in zooms)
    if axis is None:  # the rule of mrsr.data.geometry, shared with stage=predict
        axis = thick_axis(zooms)
        if axis is None:
            if two_thick_axes(zooms):
                raise ConfigError(
                    f"voxels are {sizes} mm: two axes are thick; through-plane SR restores "
                    "one thick axis and learns from square in-plane voxels: resample the scan "
                    "so that only one axis is thick first"
                )
            axis = int(np.argmax(zooms))  # (nearly) isotropic: refused below
    elif axis not in (0, 1, 2):
        raise ConfigError(
            f"throughplane.axis={axis} must be 0, 1 or 2 "
            "(or null: the axis with the largest voxel size)"
        )
    inplane = tuple(a for a in range(3) if a != axis)
    a, b = (zooms[i] for i in inplane)
    if not is_square(a, b):
        raise ConfigError(
            f"in-plane voxels are not square ({sizes} mm, thick axis {axis}): through-plane SR "
            "learns from in-plane slices and needs equal in-plane voxel sizes (resample them "
            "first)"
        )
    geom = ThickGeometry(axis, inplane, (a + b) / 2, zooms[axis], int(shape[axis]))  # type: ignore[arg-type]
    if geom.ratio < MIN_RATIO:
        raise ConfigError(
            f"voxels are {sizes} mm: the scan is (nearly) isotropic, nothing to do (the thickest "
            f"axis, {axis}, is {geom.ratio:.2f}x the in-plane voxel size; through-plane SR needs "
            f">= {MIN_RATIO}x)"
        )
    if geom.ratio > MAX_RATIO:
        raise ConfigError(
            f"voxels are {sizes} mm: the thick axis {axis} is {geom.ratio:.1f}x "
            "the in-plane voxel size, "
            f"above the {MAX_RATIO:g}x through-plane SR can restore (resample in-plane to >= "
            f"{geom.spacing / MAX_RATIO:.3g} mm first, or use a scan with thinner slices)"
        )
    if geom.n_thick < MIN_SLICES:
        raise ConfigError(
            f"the scan has {geom.n_thick} slice(s) along its thick axis {axis}: "
            "too few in-plane slices "
            f"to learn from (through-plane SR needs >= {MIN_SLICES})"
        )
    small = min(int(shape[i]) for i in inplane)
    if small < MIN_INPLANE or small * geom.voxel / geom.spacing < MIN_THICK_SPAN:
        raise ConfigError(
            f"the in-plane slices are {shape[inplane[0]]} x {shape[inplane[1]]} voxels "
            f"of {geom.voxel:g} "
            f"mm: too small to learn from (each in-plane axis needs >= {MIN_INPLANE} voxels and "
            f">= {MIN_THICK_SPAN} slice spacings of {geom.spacing:g} mm)"
        )
    return geom


def grid_affine(affine: np.ndarray, axis: int, grid: Grid) -> np.ndarray:
    """``affine`` with voxel index ``j`` along ``axis`` mapped to ``grid``'s
    ``offset + slope * j``."""
    m = np.eye(4)
    m[axis, axis] = grid.slope
    m[axis, 3] = grid.offset
    return np.asarray(affine, dtype=np.float64) @ m
