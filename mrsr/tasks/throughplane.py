"""``stage=throughplane``: make a thick-slice scan isotropic with no training set.

Self-supervised through-plane SR (SMORE, Zhao et al. 2020): a same-size SR network is trained
with stage ``sr``'s module and loop on the scan's own in-plane slices, degraded along one
in-plane axis with the slice profile and spacing of the thick axis and interpolated back
(:mod:`mrsr.data.self_pairs`). The thick axis is then interpolated to the in-plane voxel size
with the same cubic spline, the network restores every slice that cuts across it in both
orthogonal orientations, and the two results are averaged. With ``throughplane.spacing`` other
than the in-plane voxel size the result is finally re-sampled to that spacing (cubic spline).

With ``throughplane.slice_profile=auto`` (the default) the slice profile is estimated from the
scan first (:mod:`mrsr.data.profile_estimate`); after applying, a self-check compares the
output's power above the thick Nyquist across and along the slices and warns when the network
seems to have invented detail. Factors above 8x and scans too small to learn from are refused.

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
from mrsr.data.geometry import THICK_RATIO, is_square, thick_axis, two_thick_axes
from mrsr.data.profile_estimate import ProfileFit, estimate_profile, highband_ratio
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
from mrsr.tasks.predict import (
    check_output_dtype,
    check_paths,
    super_resolve_volume,
    write_nifti_atomic,
)

log = logging.getLogger("mrsr")
MIN_RATIO = THICK_RATIO  # slice spacing / in-plane voxel size below which there is nothing to do
MAX_RATIO = 8.0  # above it the slices hold too little to restore
MIN_SLICES = 8  # in-plane slices (along the thick axis) needed to learn from
MIN_INPLANE = 16  # in-plane voxels needed along each in-plane axis
MIN_THICK_SPAN = 4  # thick slices an in-plane axis must span (training degrades it like the thick axis)
HIGHBAND_LIMIT = 2.0  # output power across / in-plane above the thick Nyquist beyond which we warn
HELD_OUT_NOTE = ("held-out in-plane slices degraded with the {} profile: a simulation that assumes that profile, "
                 "not a measure of the through-plane gain")
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
    if axis is None:  # the rule of mrsr.data.geometry, shared with stage=predict
        axis = thick_axis(zooms)
        if axis is None:
            if two_thick_axes(zooms):
                raise ConfigError(f"voxels are {sizes} mm: two axes are thick; through-plane SR restores one thick "
                                  "axis and learns from square in-plane voxels: resample the scan so that only one "
                                  "axis is thick first")
            axis = int(np.argmax(zooms))  # (nearly) isotropic: refused below
    elif axis not in (0, 1, 2):
        raise ConfigError(f"throughplane.axis={axis} must be 0, 1 or 2 (or null: the axis with the largest voxel size)")
    inplane = tuple(a for a in range(3) if a != axis)
    a, b = (zooms[i] for i in inplane)
    if not is_square(a, b):
        raise ConfigError(f"in-plane voxels are not square ({sizes} mm, thick axis {axis}): through-plane SR learns "
                          "from in-plane slices and needs equal in-plane voxel sizes (resample them first)")
    geom = ThickGeometry(axis, inplane, (a + b) / 2, zooms[axis], int(shape[axis]))  # type: ignore[arg-type]
    if geom.ratio < MIN_RATIO:
        raise ConfigError(f"voxels are {sizes} mm: the scan is (nearly) isotropic, nothing to do (the thickest "
                          f"axis, {axis}, is {geom.ratio:.2f}x the in-plane voxel size; through-plane SR needs "
                          f">= {MIN_RATIO}x)")
    if geom.ratio > MAX_RATIO:
        raise ConfigError(f"voxels are {sizes} mm: the thick axis {axis} is {geom.ratio:.1f}x the in-plane voxel size, "
                          f"above the {MAX_RATIO:g}x through-plane SR can restore (resample in-plane to >= "
                          f"{geom.spacing / MAX_RATIO:.3g} mm first, or use a scan with thinner slices)")
    if geom.n_thick < MIN_SLICES:
        raise ConfigError(f"the scan has {geom.n_thick} slice(s) along its thick axis {axis}: too few in-plane slices "
                          f"to learn from (through-plane SR needs >= {MIN_SLICES})")
    small = min(int(shape[i]) for i in inplane)
    if small < MIN_INPLANE or small * geom.voxel / geom.spacing < MIN_THICK_SPAN:
        raise ConfigError(f"the in-plane slices are {shape[inplane[0]]} x {shape[inplane[1]]} voxels of {geom.voxel:g} "
                          f"mm: too small to learn from (each in-plane axis needs >= {MIN_INPLANE} voxels and "
                          f">= {MIN_THICK_SPAN} slice spacings of {geom.spacing:g} mm)")
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


def restored_fine(net: torch.nn.Module, norm: np.ndarray, geom: ThickGeometry, batch_size: int = 8,
                  tile: int | None = None, device: torch.device | None = None, planes: tuple[int, ...] = (2, 1),
                  progress: bool = True) -> np.ndarray:
    """The normalised scan (thick axis first) on the working grid (the in-plane voxel size):
    cubic spline along the thick axis, restored across it (:func:`restore_across`)."""
    return restore_across(net, cubic_along(norm, 0, geom.fine_grid()), batch_size, tile,
                          device or torch.device("cpu"), progress, planes)


def to_output(sr: np.ndarray, lo: float, hi: float, geom: ThickGeometry, out_grid: Grid) -> np.ndarray:
    """A working-grid result of :func:`restored_fine` re-sampled to ``out_grid`` if that differs,
    in the file's axis order and units (nothing clipped at the top, nothing below ``lo``)."""
    fine_grid = geom.fine_grid()
    if fine_grid != out_grid:  # re-sample from the working grid to the asked spacing
        sr = cubic_along(sr, 0, Grid(out_grid.n, (out_grid.offset - fine_grid.offset) / fine_grid.slope,
                                     out_grid.slope / fine_grid.slope))
    return np.maximum(np.moveaxis(sr, 0, geom.axis) * np.float32(hi - lo) + np.float32(lo), np.float32(lo))


def make_isotropic(net: torch.nn.Module, norm: np.ndarray, lo: float, hi: float, geom: ThickGeometry,
                   out_grid: Grid, batch_size: int = 8, tile: int | None = None,
                   device: torch.device | None = None, planes: tuple[int, ...] = (2, 1),
                   progress: bool = True) -> np.ndarray:
    """The scan (``norm, lo, hi`` from :func:`normalised_scan`) on ``out_grid`` along the thick
    axis, in the file's axis order and units (:func:`restored_fine`, then :func:`to_output`)."""
    sr = restored_fine(net, norm, geom, batch_size, tile, device, planes, progress)
    return to_output(sr, lo, hi, geom, out_grid)


def self_check(sr: np.ndarray, interpolated: np.ndarray, norm: np.ndarray, geom: ThickGeometry,
               profile: SliceProfile) -> dict[str, Any]:
    """Over-sharpening check on the working-grid result ``sr`` (thick axis first, normalised)
    against the scan ``norm``: :func:`~mrsr.data.profile_estimate.highband_ratio` of the output
    and of ``interpolated`` (the cubic spline it was restored from), with the profile the network
    was trained with. A correct output has about the scan's in-plane power above the thick
    Nyquist (ratio near 1); clearly more means detail was invented across the slices."""
    ratio = highband_ratio(sr, norm, geom.voxel, geom.spacing, profile, select=interpolated)
    cubic = highband_ratio(interpolated, norm, geom.voxel, geom.spacing, profile)
    return {"highband_ratio": ratio, "highband_ratio_cubic": cubic, "highband_limit": HIGHBAND_LIMIT,
            "oversharpened": bool(ratio > HIGHBAND_LIMIT)}


def choose_profile(tp: DictConfig, geom: ThickGeometry, norm: np.ndarray) -> tuple[SliceProfile, ProfileFit | None]:
    """``throughplane.slice_profile``: the profile given, or (``auto``) the one estimated from the
    scan (:func:`~mrsr.data.profile_estimate.estimate_profile`; of ``slice_thickness`` when set)."""
    thickness = tp.get("slice_thickness")
    kind = str(tp.slice_profile)
    if kind != "auto":
        step = tp.get("profile_step") or geom.voxel
        return slice_profile(kind, float(thickness or geom.spacing), float(step)), None
    if thickness is not None and not float(thickness) > 0:
        raise ConfigError(f"throughplane.slice_thickness={thickness} must be > 0 mm")
    try:
        fit = estimate_profile(norm, geom.voxel, geom.spacing, None if thickness is None else float(thickness))
    except ValueError as err:
        fallback = slice_profile("gaussian", float(thickness or geom.spacing))
        log.warning("could not estimate the slice profile (%s): assuming %s", err, fallback.describe())
        return fallback, None
    return fit.profile, fit


def _check_settings(cfg: DictConfig) -> None:
    tp = cfg.throughplane
    check_output_dtype(tp.get("output_dtype", "float32"), "throughplane.output_dtype")
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
    vol = read_nifti(inp, ndims=(3,), volume=None if tp.get("volume") is None else int(tp.volume),
                     volume_key="throughplane.volume")
    geom = thick_geometry(vol.zooms, vol.data.shape, None if tp.get("axis") is None else int(tp.axis))
    t0 = time.perf_counter()
    percentile = float(tp.percentile)
    norm, lo, hi = normalised_scan(vol.data, geom.axis, percentile)  # (thick, a, b)
    profile, fit = choose_profile(tp, geom, norm)
    source = "given" if fit is None and str(tp.slice_profile) != "auto" else "estimated" if fit else "fallback"
    out_grid = geom.output_grid(tp.get("spacing"))
    log.info("%s: %s voxels %s mm; thick axis %d (%g mm, %.2fx the in-plane %g mm), slice profile %s; output %d "
             "slices of %g mm", inp.name, tuple(vol.data.shape), " x ".join(f"{z:g}" for z in vol.zooms), geom.axis,
             geom.spacing, geom.ratio, geom.voxel, profile.describe(), out_grid.n, out_grid.slope * geom.spacing)
    warnings: list[str] = []
    if fit is not None:
        log.info("slice profile estimated from the scan: %s", fit.describe())
        if fit.ambiguous:
            log.info("the scan's spectrum barely tells %s from %s apart (misfits within 15%%): the amount of "
                     "blur is estimated, its family is not",
                     fit.profile.describe(), fit.other.describe() if fit.other else "")
        if fit.at_edge:
            warnings.append(f"the slice profile estimate ({fit.profile.describe()}) is at the edge of the widths "
                            "searched: set throughplane.slice_profile / slice_thickness from the protocol")

    run_dir = output_dir(cfg)
    trainer = build_trainer(cfg)
    if trainer.world_size > 1:
        raise ConfigError("stage=throughplane trains on one scan on one device: use trainer=default or trainer=gpu")
    L.seed_everything(int(cfg.seed), workers=True)
    dm = SelfPairsDataModule(norm, geom.voxel, geom.spacing, profile, int(cfg.trainer.max_steps),
                             int(tp.batch_size), int(tp.patch_size), float(tp.holdout), int(cfg.seed), percentile)
    module = build_module(cfg, degradation=dm.degradation)  # the slice profile is the scan's degradation
    module.config["throughplane"] = {"profile": profile.describe(), "profile_source": source, **asdict(geom)}
    trainer.fit(module, datamodule=dm)
    held = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val/psnr", "val/psnr_bicubic")}
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tile = None if tp.get("tile") in (None, 0) else int(tp.tile)
    interpolated = cubic_along(norm, 0, geom.fine_grid())  # once: restored, and the check's baseline
    sr = restore_across(module.eval_generator, interpolated, int(tp.infer_batch_size), tile, device)
    check = self_check(sr, interpolated, norm, geom, profile)
    del interpolated
    result = to_output(sr, lo, hi, geom, out_grid)
    del sr
    write_nifti_atomic(out, result, grid_affine(vol.affine, geom.axis, out_grid), vol.header,
                       str(tp.get("output_dtype", "float32")), "mrsr through-plane SR", resliced=True)
    t_apply = time.perf_counter() - t1
    if check["oversharpened"]:
        warnings.append(f"the output has {check['highband_ratio']:.1f}x the in-plane power above the thick Nyquist "
                        f"across its slices (a correct result has about 1x; limit {HIGHBAND_LIMIT:g}x): the network "
                        "may have invented detail and be worse than the cubic spline; set "
                        "throughplane.slice_profile / slice_thickness from the protocol")

    note = HELD_OUT_NOTE.format({"given": "given", "estimated": "estimated"}.get(source, "assumed"))
    record = {
        "input": str(inp), "output": str(out), "shape_in": list(vol.data.shape), "shape_out": list(result.shape),
        "axis": geom.axis, "voxel_mm": geom.voxel, "spacing_mm": geom.spacing,
        "output_spacing_mm": out_grid.slope * geom.spacing, "profile": profile.describe(),
        "profile_source": source, "profile_fit": None if fit is None else fit.record(),
        "held_out_psnr": held.get("val/psnr"), "held_out_psnr_cubic": held.get("val/psnr_bicubic"),
        "held_out_note": note, "held_out_slices": dm.held_out, "self_check": check,
        "may_be_worse_than_cubic": check["oversharpened"], "warnings": warnings,
        "train_seconds": t_train, "apply_seconds": t_apply, "device": device_label(device),
    }
    if trainer.is_global_zero:
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2) + "\n")
    if held:
        log.info("%s: SR %.2f dB vs cubic spline %.2f dB", note[0].upper() + note[1:],
                 held.get("val/psnr", float("nan")), held.get("val/psnr_bicubic", float("nan")))
    log.info("self-check: power above the thick Nyquist across slices / in-plane %.2f (cubic spline %.2f; "
             "about 1 expected, warning above %g)", check["highband_ratio"], check["highband_ratio_cubic"],
             HIGHBAND_LIMIT)
    for w in warnings:
        log.warning(w)
    log.info("%s -> %s %s in %.0f s (training %.0f s, applying %.0f s on %s)", inp.name, out.name,
             tuple(result.shape), t_train + t_apply, t_train, t_apply, device_label(device))
    return {"score": held.get("val/psnr"), **record}
