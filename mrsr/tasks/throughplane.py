"""``stage=throughplane``: make a thick-slice scan isotropic with no training set.

Self-supervised through-plane SR (SMORE, Zhao et al. 2020): a same-size SR network is trained
with stage ``sr``'s module and loop on the scan's own in-plane slices, degraded along one
in-plane axis with the slice profile and spacing of the thick axis and interpolated back
(:mod:`mrsr.data.self_pairs`). The thick axis is then interpolated to the in-plane voxel size
with the same cubic spline, the network restores every slice that cuts across it in both
orthogonal orientations, and the two results are averaged. With ``throughplane.spacing`` other
than the in-plane voxel size the result is finally re-sampled to that spacing (cubic spline).

The output grid covers the input's field of view, centred (see
:mod:`mrsr.data.slice_profile`), and its affine puts each voxel where it is, so the output
overlays the input in a viewer. Intensities are handled as by ``stage=predict``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from mrsr.data.degrade import normalise_with_range
from mrsr.data.self_pairs import SelfPairsDataModule
from mrsr.data.slice_profile import (
    Grid,
    SliceProfile,
    along,
    resampled_grid,
    slice_profile,
    spline_matrix,
)
from mrsr.errors import ConfigError
from mrsr.results import atomic_write_text, device_label
from mrsr.tasks.common import build_trainer, output_dir
from mrsr.tasks.predict import check_paths, super_resolve_volume, write_nifti_atomic

log = logging.getLogger("mrsr")
MIN_RATIO = 1.5  # slice spacing / in-plane voxel size below which there is nothing to do
SQUARE_TOLERANCE = 0.05  # relative difference allowed between the two in-plane voxel sizes
RECORD = "throughplane.json"


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


def thick_geometry(zooms: tuple[float, ...], shape: tuple[int, ...], axis: int | None = None) -> ThickGeometry:
    """The thick axis (``axis`` or the largest voxel size) and its ratio to the in-plane size;
    an isotropic scan or non-square in-plane voxels are refused."""
    zooms = tuple(float(z) for z in zooms[:3])
    sizes = " x ".join(f"{z:g}" for z in zooms)
    if axis is None:
        axis = int(np.argmax(zooms))
    elif axis not in (0, 1, 2):
        raise ConfigError(f"throughplane.axis={axis} must be 0, 1 or 2 (or null: the axis with the largest voxel size)")
    inplane = tuple(a for a in range(3) if a != axis)
    a, b = (zooms[i] for i in inplane)
    if abs(a - b) > SQUARE_TOLERANCE * min(a, b):
        raise ConfigError(f"in-plane voxels are not square ({sizes} mm, thick axis {axis}): through-plane SR learns "
                          "from in-plane slices and needs equal in-plane voxel sizes (resample them first)")
    geom = ThickGeometry(axis, inplane, (a + b) / 2, zooms[axis], int(shape[axis]))  # type: ignore[arg-type]
    if geom.ratio < MIN_RATIO:
        raise ConfigError(f"voxels are {sizes} mm: the scan is (nearly) isotropic, nothing to do (the thickest "
                          f"axis, {axis}, is {geom.ratio:.2f}x the in-plane voxel size; through-plane SR needs "
                          f">= {MIN_RATIO}x)")
    if geom.n_thick < 2:
        raise ConfigError(f"the scan has {geom.n_thick} slice along axis {axis}: nothing to interpolate")
    return geom


def grid_affine(affine: np.ndarray, axis: int, grid: Grid) -> np.ndarray:
    """``affine`` with voxel index ``j`` along ``axis`` mapped to ``grid``'s ``offset + slope * j``."""
    m = np.eye(4)
    m[axis, axis] = grid.slope
    m[axis, 3] = grid.offset
    return np.asarray(affine, dtype=np.float64) @ m


def cubic_along(volume: np.ndarray, axis: int, grid: Grid) -> np.ndarray:
    """Cubic-spline interpolation of ``volume`` along ``axis`` at ``grid``'s positions."""
    return along(volume, spline_matrix(volume.shape[axis], grid.positions), axis)


def restore_across(net: torch.nn.Module, fine: np.ndarray, batch_size: int, tile: int | None,
                   device: torch.device, progress: bool = True, planes: tuple[int, ...] = (2, 1)) -> np.ndarray:
    """Apply the same-size network to every slice across the thick axis (axis 0 of ``fine``),
    thick axis on the image height, in the orientations of ``planes`` (2: slices at fixed
    index of axis 2, i.e. (thick, axis-1) images; 1: at fixed axis 1); the mean of them."""
    out = np.zeros_like(fine)
    for n, plane_axis in enumerate(planes):
        slices = np.ascontiguousarray(np.moveaxis(fine, plane_axis, 0))  # (n, thick, other)
        restored = super_resolve_volume(net, slices, 1, batch_size, tile, 16, device, progress,
                                        f"restoring slices across the thick axis ({n + 1}/{len(planes)})")
        out += np.moveaxis(restored, 0, plane_axis)
    return out / len(planes)


def normalised_scan(data: np.ndarray, axis: int, percentile: float = 99.5) -> tuple[np.ndarray, float, float]:
    """The scan normalised as in training (nothing clipped), thick ``axis`` first, and the
    ``(lo, hi)`` that map it back to the input's units."""
    norm, lo, hi = normalise_with_range(data, percentile)
    return np.moveaxis(norm, axis, 0), lo, hi


def make_isotropic(net: torch.nn.Module, norm: np.ndarray, lo: float, hi: float, geom: ThickGeometry,
                   out_grid: Grid, batch_size: int = 8, tile: int | None = None,
                   device: torch.device | None = None, planes: tuple[int, ...] = (2, 1),
                   progress: bool = True) -> np.ndarray:
    """The scan (``norm, lo, hi`` from :func:`normalised_scan`) on ``out_grid`` along the thick
    axis, in the file's axis order and units: cubic spline to the in-plane voxel size, restored
    across the thick axis (:func:`restore_across`), re-sampled to ``out_grid`` if that differs,
    mapped back (nothing clipped at the top, nothing below the input's minimum)."""
    fine_grid = geom.fine_grid()
    sr = restore_across(net, cubic_along(norm, 0, fine_grid), batch_size, tile, device or torch.device("cpu"),
                        progress, planes)
    if fine_grid != out_grid:  # re-sample from the working grid to the asked spacing
        sr = cubic_along(sr, 0, Grid(out_grid.n, (out_grid.offset - fine_grid.offset) / fine_grid.slope,
                                     out_grid.slope / fine_grid.slope))
    return np.maximum(np.moveaxis(sr, 0, geom.axis) * np.float32(hi - lo) + np.float32(lo), np.float32(lo))


def _profile(tp: DictConfig, geom: ThickGeometry) -> SliceProfile:
    thickness = tp.get("slice_thickness") or geom.spacing
    step = tp.get("profile_step") or geom.voxel
    return slice_profile(str(tp.slice_profile), float(thickness), float(step))


def _check_settings(cfg: DictConfig) -> None:
    tp = cfg.throughplane
    if tp.get("spacing") is not None and not float(tp.spacing) > 0:
        raise ConfigError(f"throughplane.spacing={tp.spacing} must be > 0 mm (or null: the in-plane voxel size)")
    if int(cfg.trainer.max_steps) < 1:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} must be >= 1 (training steps on the scan)")
    target = str(cfg.loss.get("target", "hr"))
    if target != "hr":
        raise ConfigError(f"loss.target={target}: through-plane SR compares with the in-plane slice itself "
                          "(loss.target=hr); its degradation is the slice profile, not data.degradation")


def throughplane(cfg: DictConfig) -> dict[str, Any]:
    """Train on ``cfg.input``'s in-plane slices, super-resolve its thick axis into ``cfg.output``."""
    from mrsr.data.readers import read_nifti
    from mrsr.tasks.train import build_module

    inp, out = Path(str(cfg.input)).expanduser(), Path(str(cfg.output)).expanduser()
    check_paths(inp, out, bool(cfg.get("overwrite", False)))
    if inp.suffix in (".h5", ".hdf5"):
        raise ConfigError(f"input={inp}: through-plane SR needs a NIfTI volume with its voxel sizes")
    tp = cfg.throughplane
    _check_settings(cfg)
    vol = read_nifti(inp, ndims=(3,))
    geom = thick_geometry(vol.zooms, vol.data.shape, None if tp.get("axis") is None else int(tp.axis))
    profile = _profile(tp, geom)
    out_grid = geom.output_grid(tp.get("spacing"))
    log.info("%s: %s voxels %s mm; thick axis %d (%g mm, %.2fx the in-plane %g mm), slice profile %s; output %d "
             "slices of %g mm", inp.name, tuple(vol.data.shape), " x ".join(f"{z:g}" for z in vol.zooms), geom.axis,
             geom.spacing, geom.ratio, geom.voxel, profile.describe(), out_grid.n, out_grid.slope * geom.spacing)

    t0 = time.perf_counter()
    percentile = float(tp.percentile)
    norm, lo, hi = normalised_scan(vol.data, geom.axis, percentile)  # (thick, a, b)
    run_dir = output_dir(cfg)
    trainer = build_trainer(cfg)
    if trainer.world_size > 1:
        raise ConfigError("stage=throughplane trains on one scan on one device: use trainer=default or trainer=gpu")
    L.seed_everything(int(cfg.seed), workers=True)
    dm = SelfPairsDataModule(norm, geom.voxel, geom.spacing, profile, int(cfg.trainer.max_steps),
                             int(tp.batch_size), int(tp.patch_size), float(tp.holdout), int(cfg.seed), percentile)
    module = build_module(cfg, degradation=dm.degradation)  # the slice profile is the scan's degradation
    module.config["throughplane"] = {"profile": profile.describe(), **asdict(geom)}
    trainer.fit(module, datamodule=dm)
    held = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val/psnr", "val/psnr_bicubic")}
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tile = None if tp.get("tile") in (None, 0) else int(tp.tile)
    result = make_isotropic(module.eval_generator, norm, lo, hi, geom, out_grid, int(tp.infer_batch_size), tile,
                            device)
    write_nifti_atomic(out, result, grid_affine(vol.affine, geom.axis, out_grid))
    t_apply = time.perf_counter() - t1

    record = {
        "input": str(inp), "output": str(out), "shape_in": list(vol.data.shape), "shape_out": list(result.shape),
        "axis": geom.axis, "voxel_mm": geom.voxel, "spacing_mm": geom.spacing,
        "output_spacing_mm": out_grid.slope * geom.spacing, "profile": profile.describe(),
        "held_out_psnr": held.get("val/psnr"), "held_out_psnr_cubic": held.get("val/psnr_bicubic"),
        "held_out_slices": dm.held_out, "train_seconds": t_train, "apply_seconds": t_apply,
        "device": device_label(device),
    }
    if trainer.is_global_zero:
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2) + "\n")
    if held:
        log.info("held-out in-plane slices (degraded like the thick axis): SR %.2f dB vs cubic spline %.2f dB",
                 held.get("val/psnr", float("nan")), held.get("val/psnr_bicubic", float("nan")))
    log.info("%s -> %s %s in %.0f s (training %.0f s, applying %.0f s on %s)", inp.name, out.name,
             tuple(result.shape), t_train + t_apply, t_train, t_apply, device_label(device))
    return {"score": held.get("val/psnr"), **record}
