"""Through-plane SR measured on a 1 mm volume made thick: gain over cubic-spline interpolation
and time, as ``stage=throughplane`` runs for users.

:func:`evaluate_simulated` simulates thick slices along one axis (:func:`simulate_thick`: the
stage's own sampling matrix, or the independent :func:`~mrsr.isotropic.simulate.plain_thick`),
writes them as a NIfTI with the right affine, runs ``python -m mrsr.run stage=throughplane`` on
it in a child process (:func:`mrsr.stage_process.run_stage`, so the time includes start-up)
onto the reference grid, and scores SR and the cubic spline along the thick axis against the
reference over the whole volume (:func:`mrsr.metrics.volume_scores`). The network never sees
the reference: it learns from the thick scan's own in-plane slices.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from mrsr.data.readers import read_nifti
from mrsr.errors import ConfigError
from mrsr.inference import write_nifti_atomic
from mrsr.isotropic.estimate import highband_ratio
from mrsr.isotropic.geometry import grid_affine, resampled_grid, thick_geometry
from mrsr.isotropic.operators import along, cubic_along, thick_sampling
from mrsr.isotropic.profile import PROFILES, slice_profile
from mrsr.isotropic.restore import make_isotropic, normalised_scan
from mrsr.isotropic.simulate import bandlimited, plain_profile, plain_thick
from mrsr.metrics import volume_scores
from mrsr.stage_process import run_stage

DEMO = "mrsr/assets/demo"
# ``path:axis`` of the embedded demo volumes and the axis each is made thick along (paths
# relative to the checkout's root, where the experiments are run)
DEFAULT_VOLUMES = [
    f"{DEMO}/stroke_T1.nii.gz:2",
    f"{DEMO}/stroke_T2.nii.gz:2",
    f"{DEMO}/stroke_FLAIR.nii.gz:2",
    f"{DEMO}/seg3d_T1.nii.gz:0",
]


def pad_to(vol: np.ndarray, shape: list[int] | None) -> np.ndarray:
    """``vol`` zero-padded or cropped to ``shape``, centred (``None``: as it is)."""
    if not shape:
        return vol
    out = np.zeros(shape, dtype=vol.dtype)
    src = tuple(
        slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + min(n, m))
        for n, m in zip(vol.shape, shape, strict=True)
    )
    dst = tuple(
        slice(max(0, (m - n) // 2), max(0, (m - n) // 2) + min(n, m))
        for n, m in zip(vol.shape, shape, strict=True)
    )
    out[dst] = vol[src]
    return out


def simulate_thick(
    ref: np.ndarray,
    affine: np.ndarray,
    voxel: float,
    axis: int,
    spacing: float,
    profile: str = "gaussian",
    operator: str = "stage",
) -> tuple[np.ndarray, np.ndarray]:
    """Thick slices every ``spacing`` mm along ``axis`` (``profile`` of FWHM or width = spacing).

    ``operator="stage"`` uses the stage's own sampling matrix (profile integrated over each voxel);
    ``"plain"`` an independent one (:func:`~mrsr.isotropic.simulate.plain_thick`), so the test
    is not an inverse crime."""
    if operator == "plain":
        thick = plain_thick(np.moveaxis(ref, axis, 0), int(round(spacing / voxel)), profile)
        grid = resampled_grid(ref.shape[axis], voxel, spacing)  # the stage's grid: the same
        return np.moveaxis(thick, 0, axis), grid_affine(affine, axis, grid)
    if profile not in PROFILES:
        raise ConfigError(f"true profile {profile!r} is not the stage's: simulate it plainly")
    sampling, grid = thick_sampling(
        ref.shape[axis], voxel, spacing, slice_profile(profile, spacing)
    )
    return along(ref, sampling, axis), grid_affine(affine, axis, grid)


def reference_ratio(
    ref: np.ndarray, thick: np.ndarray, axis: int, voxel: float, spacing: float, profile: str
) -> float:
    """The stage's self-check ratio (:func:`~mrsr.isotropic.estimate.highband_ratio`) of a
    perfect output: the reference against the thick scan, with the true profile."""
    norm, lo, hi = normalised_scan(thick, axis)
    truth = (np.moveaxis(ref, axis, 0) - lo) / (hi - lo)
    return highband_ratio(truth, norm, voxel, spacing, plain_profile(profile, spacing, voxel))


def run_throughplane(
    thick: Path, out: Path, run_dir: Path, voxel: float, overrides: list[str]
) -> float:
    """``python -m mrsr.run stage=throughplane`` from ``thick`` to ``out`` on ``voxel`` mm
    (its stdout silenced); the command's wall seconds."""
    return run_stage(
        [
            "stage=throughplane",
            f"input={thick}",
            f"output={out}",
            f"throughplane.spacing={voxel}",
            "logger=null",
        ],
        run_dir,
        extra=overrides,
        stdout=subprocess.DEVNULL,
    )


def reference_volume(
    path: str, axis: int, spacing: float, pad: list[int] | None, crop: int | None
) -> tuple[Any, np.ndarray, float, int]:
    """The volume at ``path``, its reference (padded to ``pad``, the first ``crop`` voxels
    along ``axis``, whole thick slices only), its voxel size along ``axis`` and the ratio of
    ``spacing`` to it."""
    vol = read_nifti(path)
    ref = pad_to(vol.data, pad)
    if crop:  # keep the first ``crop`` voxels along the thick axis
        ref = np.take(ref, np.arange(min(crop, ref.shape[axis])), axis=axis)
    voxel = float(vol.zooms[axis])
    r = int(round(spacing / voxel))
    if not np.isclose(r * voxel, spacing):
        raise ConfigError(
            f"{path}: spacing {spacing} mm is not a multiple of the {voxel} mm voxels "
            f"along axis {axis}"
        )
    keep = list(ref.shape)
    # whole thick slices only, so the output grid is the reference grid
    keep[axis] -= keep[axis] % r
    return vol, pad_to(ref, keep), voxel, r


def section_images(
    volumes: list[np.ndarray], ref: np.ndarray, axis: int, inplane: int
) -> list[torch.Tensor]:
    """The middle slice along ``inplane`` of each volume, thick axis vertical, scaled by the
    reference's range (its minimum to its 99.5th percentile above it)."""
    k = ref.shape[inplane] // 2
    lo, hi = float(ref.min()), float(np.percentile(ref[ref > ref.min()], 99.5))

    def cut(v: np.ndarray) -> torch.Tensor:
        img = np.take(v, k, axis=inplane)
        rest = [a for a in range(3) if a != inplane]
        if rest.index(axis) == 1:
            img = img.T
        return torch.from_numpy((img[::-1].copy() - lo) / (hi - lo)).float()

    return [cut(v) for v in volumes]


def evaluate_simulated(
    spec: str,
    spacing: float,
    pad: list[int] | None,
    overrides: list[str],
    tmp: Path,
    orientations: bool = False,
    true_profile: str = "gaussian",
    operator: str = "stage",
    crop: int | None = None,
    keep_dir: Path | None = None,
) -> tuple[dict, list]:
    """Through-plane SR of volume ``spec`` (``path[:axis]``, default axis 2) made thick every
    ``spacing`` mm, scored against it: the result row and the figure's images (thick input,
    cubic spline, SR, reference).

    ``pad``: zero-pad or crop the reference first; ``overrides``: of the stage's command;
    ``tmp``: its files; ``orientations``: also score each orientation of the same network
    alone; ``true_profile`` and ``operator``: how the thick slices are made
    (:func:`simulate_thick`); ``crop``: the first voxels along the thick axis only;
    ``keep_dir``: where to copy the thick input and the output."""
    path, _, axis_s = spec.partition(":")
    axis = int(axis_s or 2)
    vol, ref, voxel, r = reference_volume(path, axis, spacing, pad, crop)
    thick, affine = simulate_thick(ref, vol.affine, voxel, axis, spacing, true_profile, operator)
    name = Path(path).name.removesuffix(".nii.gz")
    thick_path, sr_path, run_dir = (
        tmp / f"{name}_thick.nii.gz",
        tmp / f"{name}_iso.nii.gz",
        tmp / f"{name}_run",
    )
    write_nifti_atomic(thick_path, thick, affine)
    seconds = run_throughplane(thick_path, sr_path, run_dir, voxel, overrides)
    sr_img = nib.load(str(sr_path))
    sr = np.asarray(sr_img.dataobj, dtype=np.float32)
    thick_img = nib.load(str(thick_path))
    geom = thick_geometry(thick_img.header.get_zooms(), thick.shape)
    grid = geom.output_grid(voxel)
    cubic = np.moveaxis(cubic_along(np.moveaxis(thick, axis, 0), 0, grid), 0, axis)
    cubic = np.maximum(cubic, thick.min())
    record = json.loads((run_dir / "throughplane.json").read_text())
    # score's slices along it contain the thick axis
    inplane = next(a for a in range(3) if a != axis)
    ours, base = volume_scores(sr, ref, inplane), volume_scores(cubic, ref, inplane)
    ideal = volume_scores(bandlimited(ref, axis, voxel, spacing).astype(np.float32), ref, inplane)
    per_orientation = {}
    if orientations:  # the same network, each orientation alone (the stage averages both)
        from mrsr.generators import load_generator

        net = load_generator(str(run_dir / "checkpoints" / "best.ckpt"))
        norm, lo, hi = normalised_scan(thick, geom.axis)
        for planes in ((2,), (1,), (2, 1)):
            alone = make_isotropic(net, norm, lo, hi, geom, grid, progress=False, planes=planes)
            per_orientation["+".join(f"fixed axis {geom.inplane[p - 1]}" for p in planes)] = (
                volume_scores(alone, ref, inplane)["psnr"] - base["psnr"]
            )
    row = {
        "volume": Path(path).name,
        "axis": axis,
        "shape_thick": list(thick.shape),
        "shape_ref": list(ref.shape),
        "voxel_mm": voxel,
        "spacing_mm": spacing,
        "affine_matches_reference": bool(np.allclose(sr_img.affine, vol.affine, atol=1e-4)),
        "cubic_psnr": base["psnr"],
        "sr_psnr": ours["psnr"],
        "gain_db": ours["psnr"] - base["psnr"],
        "bandlimited_psnr": ideal["psnr"],
        "bandlimited_gain_db": ideal["psnr"] - base["psnr"],
        "cubic_ssim": base["ssim"],
        "sr_ssim": ours["ssim"],
        "cubic_hfen": base["hfen"],
        "sr_hfen": ours["hfen"],
        "held_out_gain_db": (record["held_out_psnr"] or 0) - (record["held_out_psnr_cubic"] or 0),
        "seconds_total": seconds,
        "seconds_train": record["train_seconds"],
        "seconds_apply": record["apply_seconds"],
        "seconds_estimate": record.get("estimate_seconds"),
        "steps": record.get("steps"),
        "device": record["device"],
        "gain_db_by_orientation": per_orientation,
        "simulated_with": f"{true_profile} ({operator} operator)",
        "profile": record.get("profile"),
        "profile_fit": record.get("profile_fit"),
        "self_check": record.get("self_check"),
        "warnings": record.get("warnings"),
        "highband_ratio_reference": reference_ratio(ref, thick, axis, voxel, spacing, true_profile),
    }
    if keep_dir:  # the thick input and the output, for a closer look
        keep_dir.mkdir(parents=True, exist_ok=True)
        for src in (thick_path, sr_path):
            shutil.copy(src, keep_dir / f"{true_profile}_{src.name}")
    rep = np.repeat(thick, r, axis=axis)
    return row, section_images([rep, cubic, sr, ref], ref, axis, inplane)
