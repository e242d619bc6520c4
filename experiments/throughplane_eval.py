"""Through-plane SR on simulated thick-slice scans: gain over cubic-spline interpolation and time.

For each 1 mm reference volume: thick slices are simulated along ``axis`` (every ``--spacing``
mm, Gaussian slice profile of FWHM = spacing, the stage's default assumption), written as a
NIfTI with the right affine, and ``python -m mrsr.run stage=throughplane`` (the command users
run, in a subprocess, so the time includes start-up) makes it isotropic on the reference grid
(``throughplane.spacing`` = the reference's voxel size). SR and the cubic-spline interpolation
along the thick axis are scored against the reference over the whole volume, as
``eval_unseen.py`` scores in-plane SR (PSNR with peak = the reference's maximum, SSIM and HFEN
on the slices that cut across the thick axis). The network never sees the reference: it
learns from the thick scan's own in-plane slices.

    python experiments/throughplane_eval.py [VOLUME[:axis] ...] [--pad 256 256 160] \
        [--orientations] [--out records/<date>-throughplane-x] [-- trainer.max_steps=600 ...]

``--pad`` zero-pads each reference (centred) first: the timing case of a 256 x 256 x 40 scan
at 1 x 1 x 4 mm. ``--true-profile boxcar`` simulates boxcar slices (to measure what assuming the
wrong profile costs). ``--simulate plain`` makes the thick slices with an operator other than the
stage's own sampling matrix (:func:`mrsr.isotropic.simulate.plain_thick`: a sampled-Gaussian
convolution, or the mean of each group of slices), so the stage's assumptions are not built into
the test. Volumes are given as ``path[:axis]`` (default: the embedded demo volumes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _bench import device_name, write_result

from mrsr.data.readers import read_nifti
from mrsr.inference import write_nifti_atomic
from mrsr.isotropic.estimate import highband_ratio
from mrsr.isotropic.geometry import grid_affine, resampled_grid, thick_geometry
from mrsr.isotropic.operators import along, cubic_along, thick_sampling
from mrsr.isotropic.profile import PROFILES, slice_profile
from mrsr.isotropic.restore import make_isotropic, normalised_scan
from mrsr.isotropic.simulate import SIMULATED, bandlimited, plain_profile, plain_thick
from mrsr.metrics import volume_scores
from mrsr.viz import save_grid

DEMO = "mrsr/assets/demo"
DEFAULT_VOLUMES = [
    f"{DEMO}/stroke_T1.nii.gz:2",
    f"{DEMO}/stroke_T2.nii.gz:2",
    f"{DEMO}/stroke_FLAIR.nii.gz:2",
    f"{DEMO}/seg3d_T1.nii.gz:0",
]


def pad_to(vol: np.ndarray, shape: list[int] | None) -> np.ndarray:
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


def simulate(
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
        raise SystemExit(f"--true-profile {profile} needs --simulate plain")
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


def run_stage(thick: Path, out: Path, run_dir: Path, voxel: float, overrides: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "mrsr.run",
        "stage=throughplane",
        f"input={thick}",
        f"output={out}",
        f"throughplane.spacing={voxel}",
        "logger=null",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def evaluate(
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
    path, _, axis_s = spec.partition(":")
    axis = int(axis_s or 2)
    vol = read_nifti(path)
    ref = pad_to(vol.data, pad)
    if crop:  # keep the first ``crop`` voxels along the thick axis
        ref = np.take(ref, np.arange(min(crop, ref.shape[axis])), axis=axis)
    voxel = float(vol.zooms[axis])
    r = int(round(spacing / voxel))
    if not np.isclose(r * voxel, spacing):
        raise SystemExit(
            f"{path}: spacing {spacing} mm is not a multiple of the {voxel} mm voxels "
            f"along axis {axis}"
        )
    keep = list(ref.shape)
    # whole thick slices only, so the output grid is the reference grid
    keep[axis] -= keep[axis] % r
    ref = pad_to(ref, keep)
    thick, affine = simulate(ref, vol.affine, voxel, axis, spacing, true_profile, operator)
    name = Path(path).name.removesuffix(".nii.gz")
    thick_path, sr_path, run_dir = (
        tmp / f"{name}_thick.nii.gz",
        tmp / f"{name}_iso.nii.gz",
        tmp / f"{name}_run",
    )
    write_nifti_atomic(thick_path, thick, affine)
    seconds = run_stage(thick_path, sr_path, run_dir, voxel, overrides)
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
    k = ref.shape[inplane] // 2
    lo, hi = float(ref.min()), float(np.percentile(ref[ref > ref.min()], 99.5))
    rep = np.repeat(thick, r, axis=axis)

    def cut(
        v: np.ndarray,
    ) -> torch.Tensor:  # the slice at the middle of ``inplane``, thick axis vertical
        img = np.take(v, k, axis=inplane)
        rest = [a for a in range(3) if a != inplane]
        if rest.index(axis) == 1:
            img = img.T
        return torch.from_numpy((img[::-1].copy() - lo) / (hi - lo)).float()

    images = [cut(v) for v in (rep, cubic, sr, ref)]
    return row, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volumes", nargs="*", default=DEFAULT_VOLUMES)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--pad", type=int, nargs=3, default=None)
    ap.add_argument(
        "--out", default=None, help="record folder (or a .json file), with a .png figure"
    )
    ap.add_argument(
        "--simulate",
        default="stage",
        choices=["stage", "plain"],
        help="thick-slice operator: the stage's sampling matrix, or an independent plain one",
    )
    ap.add_argument(
        "--crop", type=int, default=None, help="keep the first N voxels along the thick axis"
    )
    ap.add_argument("--keep", default=None, help="folder to copy each thick input and output into")
    ap.add_argument("--orientations", action="store_true", help="also score each orientation alone")
    ap.add_argument(
        "--true-profile",
        default="gaussian",
        choices=SIMULATED,
        help=(
            "profile the thick slices are simulated with "
            "(the stage assumes throughplane.slice_profile; triangle and softbox need "
            "--simulate plain)"
        ),
    )
    args, overrides = ap.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    rows, figure = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.volumes:
            row, images = evaluate(
                spec,
                args.spacing,
                args.pad,
                overrides,
                Path(tmp),
                args.orientations,
                args.true_profile,
                args.simulate,
                args.crop,
                Path(args.keep) if args.keep else None,
            )
            rows.append(row)
            figure.append(images)
            print(
                f"{row['volume']:<22} {row['shape_thick']} -> {row['shape_ref']}: "
                f"cubic {row['cubic_psnr']:.2f} dB / "
                f"SSIM {row['cubic_ssim']:.4f} / HFEN {row['cubic_hfen']:.4f}; "
                f"SR {row['sr_psnr']:.2f} dB / "
                f"{row['sr_ssim']:.4f} / {row['sr_hfen']:.4f} ({row['gain_db']:+.2f} dB; "
                f"ideal low-pass {row['bandlimited_gain_db']:+.2f} dB); "
                f"{row['seconds_total']:.0f} s (train {row['seconds_train']:.0f} s, "
                f"apply {row['seconds_apply']:.0f} s)",
                flush=True,
            )
            check = row["self_check"] or {}
            print(
                f"  profile {row['profile']}; "
                f"self-check ratio {check.get('highband_ratio', float('nan')):.2f} "
                f"(reference {row['highband_ratio_reference']:.2f}); "
                f"warnings: {row['warnings'] or 'none'}",
                flush=True,
            )
            if row["gain_db_by_orientation"]:
                print(
                    "  gain by orientation: "
                    + ", ".join(
                        f"{k} {v:+.2f} dB" for k, v in row["gain_db_by_orientation"].items()
                    ),
                    flush=True,
                )
    gains = [r["gain_db"] for r in rows]
    print(f"mean gain {np.mean(gains):+.2f} dB over {len(rows)} volume(s)")
    if args.out:
        out = Path(args.out)
        h = max(im.shape[0] for ims in figure for im in ims)
        w = max(im.shape[1] for ims in figure for im in ims)
        cols = []
        for c, title in enumerate(("thick input", "cubic spline", "through-plane SR", "reference")):
            batch = torch.stack(
                [torch.from_numpy(pad_to(ims[c].numpy(), [h, w])) for ims in figure]
            )[:, None]
            cols.append((title, batch))
        save_grid(
            cols,
            out.with_suffix(".png") if out.suffix == ".json" else out / "figure.png",
            max_rows=len(figure),
        )
        threads = os.environ.get("OMP_NUM_THREADS", "all")
        write_result(
            out,
            {
                "cpu": device_name(torch.device("cpu")),
                "omp_threads": threads,
                "true_profile": args.true_profile,
                "simulate": args.simulate,
                "crop": args.crop,
                "overrides": overrides,
                "spacing_mm": args.spacing,
                "pad": args.pad,
                "rows": rows,
            },
            vars(args),
        )


if __name__ == "__main__":
    main()
