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
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from _bench import device_name, write_result

from mrsr.errors import ConfigError
from mrsr.isotropic.simulate import SIMULATED
from mrsr.protocols.throughplane import DEFAULT_VOLUMES, evaluate_simulated, pad_to
from mrsr.viz import save_grid


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
            row, images = evaluate_simulated(
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
    try:
        main()
    except ConfigError as err:  # a setting the simulation cannot make: one line
        raise SystemExit(f"{Path(__file__).name}: {err}") from None
