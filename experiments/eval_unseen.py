"""Score an SR model on whole NIfTI volumes it never saw, in the volumes' own units.

For each volume: the HR reference is the volume (in-plane size cropped to a multiple of the
scale); the LR input is made from every slice along ``--axis`` by each operator of
``--degradation`` (``mrsr.data.acquisition.MATRIX_OPERATORS``: ``bicubic``, antialiased, and
``kspace``, central k-space truncation, in the file's own intensities, clamped at 0; the
acquisition settings (``kspace+hamming``, ``kspace+pf0.625``, ``kspace+noise1.5%``, ...) on the
volume's normalised scale, noise sigma a fraction of its robust maximum, drawn from ``--seed``,
mapped back to its units); the LR volume is written to a NIfTI and super-resolved by
``stage=predict`` (the code path users run), with each ``--consistency`` (``kspace``: projected
onto the LR image's own k-space). SR, the bicubic and the zero-filling (sinc) up-sampling of
the LR are scored against the HR over the whole volume; ``gain_best_db`` is SR's PSNR over the
better of the two classical baselines:

- PSNR = 10 log10(peak^2 / MSE) with peak = the HR volume's maximum and MSE over all voxels;
- SSIM = mean over slices (torchmetrics, Gaussian 11, sigma 1.5), same peak;
- HFEN = ||LoG(SR) - LoG(HR)|| / ||LoG(HR)|| over the volume (the package's per-slice LoG,
  sigma 1.5, 15x15; scale-free, lower is better);
- realism, structure and consistency (``mrsr.metrics.realism``: high-band power log ratio,
  gradient W1, HFEN sigma 0.7, edge F1, tissue Dice, re-degradation error): slice means over
  the slices with foreground, on the package's normalised scale (the HR volume's intensity
  range, applied to SR, HR and LR alike).

Nothing is clipped at the top. ``--intensity`` multiplies the volume first (another scanner's
range), ``--axis`` picks the slicing axis (another orientation).

    python experiments/eval_unseen.py --scale 2 [--ckpt run/checkpoints/best.ckpt] VOLUME.nii.gz ...
    python experiments/eval_unseen.py --scale 2 VOLUME.nii.gz --degradation all \
        --consistency none kspace --no-realism                  # the evaluation matrix

Without ``--ckpt`` the bundled model of ``--scale`` is used. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from _bench import write_result

from mrsr.data.acquisition import MATRIX_OPERATORS
from mrsr.protocols.unseen import evaluate_unseen

DEFAULT_VOLUMES = ["mrsr/assets/demo/seg3d_T1.nii.gz"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volumes", nargs="*", default=DEFAULT_VOLUMES)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--ckpt", default=None, help="stage-sr checkpoint (default: the bundled model)")
    ap.add_argument("--axis", type=int, nargs="+", default=[2])
    ap.add_argument("--intensity", type=float, nargs="+", default=[1.0])
    ap.add_argument(
        "--degradation",
        nargs="+",
        default=["bicubic"],
        choices=[*MATRIX_OPERATORS, "all"],
        help="how the LR input is made (all: every operator of the evaluation matrix)",
    )
    ap.add_argument(
        "--consistency",
        nargs="+",
        default=["none"],
        choices=["none", "kspace"],
        help="predict.consistency of the SR (the first is the headline SR; others add columns)",
    )
    ap.add_argument("--no-realism", action="store_true", help="leave out the realism columns")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random operators' draws")
    ap.add_argument(
        "--out", default=None, help="record folder or .json file to write (default: print only)"
    )
    args = ap.parse_args()
    if "all" in args.degradation:
        args.degradation = list(MATRIX_OPERATORS)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.volumes:
            for axis in args.axis:
                for f, kind in ((f, k) for f in args.intensity for k in args.degradation):
                    r = evaluate_unseen(
                        path,
                        args.scale,
                        args.ckpt,
                        axis,
                        f,
                        Path(tmp),
                        kind,
                        tuple(args.consistency),
                        not args.no_realism,
                        args.seed,
                    )
                    rows.append(r)
                    dc = "".join(
                        f", SR+{m} {r[f'sr_{m}_psnr']:.2f} ({r[f'gain_best_{m}_db']:+.2f})"
                        for m in args.consistency[1:]
                    )
                    print(
                        f"{r['volume']:<32} x{args.scale} {kind:<17} axis {axis} "
                        f"intensity x{f:g}: bicubic {r['bicubic_psnr']:.2f}, "
                        f"zerofill {r['zerofill_psnr']:.2f}, SR {r['sr_psnr']:.2f} dB "
                        f"({r['gain_db']:+.2f} over bicubic, {r['gain_best_db']:+.2f} over "
                        f"{r['best_baseline']}){dc}; SSIM {r['sr_ssim']:.4f}",
                        flush=True,
                    )
    gains = [r["gain_best_db"] for r in rows]
    print(
        f"mean gain over the best classical baseline {np.mean(gains):+.2f} dB over "
        f"{len(rows)} volume(s)/setting(s)"
    )
    if args.out:
        write_result(args.out, {"ckpt": args.ckpt or f"bundled x{args.scale}", "rows": rows})


if __name__ == "__main__":
    main()
