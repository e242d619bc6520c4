"""Restoring a thick-slice scan with a trained same-size network: the scan on the in-plane voxel
grid by cubic spline, every slice across the thick axis restored in two orientations and
averaged, the result re-sampled to the output grid; and the over-sharpening self-check
(:func:`restore_scan` does both, as ``stage=throughplane`` does)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrsr.data.degrade import normalise_with_range
from mrsr.inference import super_resolve_volume
from mrsr.isotropic.estimate import highband_ratio
from mrsr.isotropic.geometry import Grid, ThickGeometry
from mrsr.isotropic.operators import along, cubic_along, fine_sampling
from mrsr.isotropic.profile import SliceProfile

HIGHBAND_LIMIT = 2.0  # output power across / in-plane above the thick Nyquist beyond which we warn


def restore_across(
    net: torch.nn.Module,
    fine: np.ndarray,
    batch_size: int,
    tile: int | None,
    device: torch.device,
    progress: bool = True,
    planes: tuple[int, ...] = (2, 1),
    crop_background: bool = False,
    bf16: bool = False,
) -> np.ndarray:
    """Apply the same-size network to every slice across the thick axis (axis 0 of ``fine``),
    thick axis on the image height, in the orientations of ``planes`` (2: slices at fixed
    index of axis 2, i.e. (thick, axis-1) images; 1: at fixed axis 1); the mean of them.
    ``crop_background`` and ``bf16`` (bfloat16 autocast on a CPU): as in
    :func:`~mrsr.inference.super_resolve_volume`."""
    out = np.zeros_like(fine)
    for n, plane_axis in enumerate(planes):
        slices = np.ascontiguousarray(np.moveaxis(fine, plane_axis, 0))  # (n, thick, other)
        restored = super_resolve_volume(
            net,
            slices,
            1,
            batch_size,
            tile,
            16,
            device,
            progress,
            f"restoring slices across the thick axis ({n + 1}/{len(planes)})",
            crop_background=crop_background,
            cpu_bf16=bf16,
        )
        out += np.moveaxis(restored, 0, plane_axis)
    return out / len(planes)


def normalised_scan(
    data: np.ndarray, axis: int, percentile: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """The scan normalised as in training (nothing clipped), thick ``axis`` first, and the
    ``(lo, hi)`` that map it back to the input's units."""
    norm, lo, hi = normalise_with_range(data, percentile)
    return np.moveaxis(norm, axis, 0), lo, hi


def restored_fine(
    net: torch.nn.Module,
    norm: np.ndarray,
    geom: ThickGeometry,
    batch_size: int = 8,
    tile: int | None = None,
    device: torch.device | None = None,
    planes: tuple[int, ...] = (2, 1),
    progress: bool = True,
) -> np.ndarray:
    """The normalised scan (thick axis first) on the working grid (the in-plane voxel size):
    cubic spline along the thick axis, restored across it (:func:`restore_across`)."""
    return restore_across(
        net,
        cubic_along(norm, 0, geom.fine_grid()),
        batch_size,
        tile,
        device or torch.device("cpu"),
        progress,
        planes,
    )


def to_output(
    sr: np.ndarray, lo: float, hi: float, geom: ThickGeometry, out_grid: Grid
) -> np.ndarray:
    """A working-grid result of :func:`restored_fine` re-sampled to ``out_grid`` if that differs,
    in the file's axis order and units (nothing clipped at the top, nothing below ``lo``)."""
    fine_grid = geom.fine_grid()
    if fine_grid != out_grid:  # re-sample from the working grid to the asked spacing
        sr = cubic_along(
            sr,
            0,
            Grid(
                out_grid.n,
                (out_grid.offset - fine_grid.offset) / fine_grid.slope,
                out_grid.slope / fine_grid.slope,
            ),
        )
    return np.maximum(
        np.moveaxis(sr, 0, geom.axis) * np.float32(hi - lo) + np.float32(lo), np.float32(lo)
    )


def make_isotropic(
    net: torch.nn.Module,
    norm: np.ndarray,
    lo: float,
    hi: float,
    geom: ThickGeometry,
    out_grid: Grid,
    batch_size: int = 8,
    tile: int | None = None,
    device: torch.device | None = None,
    planes: tuple[int, ...] = (2, 1),
    progress: bool = True,
) -> np.ndarray:
    """The scan (``norm, lo, hi`` from :func:`normalised_scan`) on ``out_grid`` along the thick
    axis, in the file's axis order and units (:func:`restored_fine`, then :func:`to_output`)."""
    sr = restored_fine(net, norm, geom, batch_size, tile, device, planes, progress)
    return to_output(sr, lo, hi, geom, out_grid)


def thick_consistency(
    fine: np.ndarray, norm: np.ndarray, geom: ThickGeometry, profile: SliceProfile
) -> float:
    """``||S(fine) - norm|| / ||norm||``: the working-grid result ``fine`` (thick axis first,
    normalised) made into the scan's thick slices again by ``profile`` (``S``), against the scan
    ``norm``. An output that agrees with what was acquired reads low."""
    again = along(fine, fine_sampling(geom.fine_grid(), geom.n_thick, geom.voxel, profile), 0)
    ref = np.asarray(norm, dtype=np.float64)
    return float(np.linalg.norm(again - ref) / max(np.linalg.norm(ref), 1e-30))


def self_check(
    sr: np.ndarray,
    interpolated: np.ndarray,
    norm: np.ndarray,
    geom: ThickGeometry,
    profile: SliceProfile,
) -> dict[str, Any]:
    """Over-sharpening check on the working-grid result ``sr`` (thick axis first, normalised)
    against the scan ``norm``: :func:`~mrsr.isotropic.estimate.highband_ratio` of the output
    and of ``interpolated`` (the cubic spline it was restored from), with the profile the network
    was trained with. A correct output has about the scan's in-plane power above the thick
    Nyquist (ratio near 1); clearly more means detail was invented across the slices. Also the
    :func:`thick_consistency` of both (reported, not judged)."""
    ratio = highband_ratio(sr, norm, geom.voxel, geom.spacing, profile, select=interpolated)
    cubic = highband_ratio(interpolated, norm, geom.voxel, geom.spacing, profile)
    return {
        "highband_ratio": ratio,
        "highband_ratio_cubic": cubic,
        "highband_limit": HIGHBAND_LIMIT,
        "oversharpened": bool(ratio > HIGHBAND_LIMIT),
        "consistency": thick_consistency(sr, norm, geom, profile),
        "consistency_cubic": thick_consistency(interpolated, norm, geom, profile),
    }


def restore_scan(
    net: torch.nn.Module,
    norm: np.ndarray,
    lo: float,
    hi: float,
    geom: ThickGeometry,
    out_grid: Grid,
    profile: SliceProfile,
    batch_size: int,
    tile: int | None,
    device: torch.device,
    planes: tuple[int, ...] = (2, 1),
    crop_background: bool = False,
    bf16: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The scan (``norm, lo, hi`` from :func:`normalised_scan`) on ``out_grid`` along the thick
    axis, in the file's axis order and units, as :func:`make_isotropic`; and the
    :func:`self_check` of the working-grid result (the cubic spline is computed once: restored,
    and the check's baseline)."""
    # once: restored, and the check's baseline
    interpolated = cubic_along(norm, 0, geom.fine_grid())
    sr = restore_across(
        net, interpolated, batch_size, tile, device, True, planes, crop_background, bf16
    )
    check = self_check(sr, interpolated, norm, geom, profile)
    del interpolated
    return to_output(sr, lo, hi, geom, out_grid), check
