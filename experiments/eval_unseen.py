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
import time
from pathlib import Path

import numpy as np
import torch
from _bench import write_result
from omegaconf import OmegaConf

from mrsr.data.acquisition import MATRIX_OPERATORS
from mrsr.data.degrade import degrade, intensity_range
from mrsr.data.readers import read_nifti
from mrsr.inference import write_nifti_atomic
from mrsr.metrics import RealismMetrics, volume_scores
from mrsr.ops import upsample
from mrsr.tasks.predict import predict

DEFAULT_VOLUMES = ["mrsr/assets/demo/seg3d_T1.nii.gz"]


def _per_slice(fn, vol: np.ndarray, axis: int) -> np.ndarray:
    """``fn`` applied to every slice along ``axis`` as one (N, 1, H, W) float64 batch."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, axis, 0)))[:, None].double()
    return np.moveaxis(fn(x)[:, 0].float().numpy(), 0, axis)


def degrade_volume(
    hr: np.ndarray, scale: int, axis: int, kind: str = "bicubic", seed: int = 0
) -> np.ndarray:
    """The LR volume of operator ``kind`` (:data:`MATRIX_OPERATORS`): ``bicubic`` and ``kspace``
    in the file's own units (clamped at 0); the others on the volume's normalised scale, slice
    ``i`` drawn from ``(seed, i)``, mapped back."""
    if kind in ("bicubic", "kspace"):
        return _per_slice(lambda x: degrade(x, scale, kind), hr, axis)
    op = MATRIX_OPERATORS[kind]()
    lo, hi = intensity_range(hr)

    def one_by_one(x: torch.Tensor) -> torch.Tensor:
        x = (x - lo) / (hi - lo)
        lr = [
            op(x[i : i + 1], scale, torch.Generator().manual_seed(seed * 100_003 + i))
            for i in range(len(x))
        ]
        return torch.cat(lr) * (hi - lo) + lo

    return _per_slice(one_by_one, hr, axis)


def interpolate_volume(lr: np.ndarray, scale: int, axis: int, mode: str = "bicubic") -> np.ndarray:
    """Every slice up-sampled by ``mode`` (bicubic, zerofill), clamped at 0."""
    return _per_slice(lambda x: upsample(x, scale, mode), lr, axis)


def realism(
    pred: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int, axis: int, kind: str
) -> dict[str, float]:
    """The realism/structure/consistency slice means of ``pred`` (normalised by HR's range)."""
    lo, hi = intensity_range(hr)

    def slices(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis((v - lo) / (hi - lo), axis, 0)))[
            :, None
        ].float()

    p, t, low = slices(pred), slices(hr), slices(lr)
    nominal = MATRIX_OPERATORS[kind]().nominal if kind in MATRIX_OPERATORS else kind
    metric = RealismMetrics(scale, nominal)
    for i in range(0, len(p), 16):
        idx = torch.arange(i, min(i + 16, len(p)))
        metric.update(p[idx], t[idx], low[idx], torch.zeros_like(idx), idx)
    return metric.row()


def crop_inplane(vol: np.ndarray, scale: int, axis: int) -> np.ndarray:
    index = [slice(None)] * 3
    for ax in range(3):
        if ax != axis:
            n = vol.shape[ax] - vol.shape[ax] % scale
            start = (vol.shape[ax] - n) // 2
            index[ax] = slice(start, start + n)
    return vol[tuple(index)]


def evaluate(
    path: str,
    scale: int,
    ckpt: str | None,
    axis: int,
    intensity: float,
    tmp: Path,
    degradation: str = "bicubic",
    consistency: tuple[str, ...] = ("none",),
    with_realism: bool = True,
    seed: int = 0,
) -> dict:
    import nibabel as nib

    vol = read_nifti(path)
    hr = crop_inplane(vol.data * np.float32(intensity), scale, axis)
    lr = degrade_volume(hr, scale, axis, degradation, seed)
    lr_path, sr_path = tmp / "lr.nii.gz", tmp / "sr.nii.gz"
    write_nifti_atomic(lr_path, lr, vol.affine)
    outputs: dict[str, np.ndarray] = {}
    for mode in consistency:
        sr_path.unlink(missing_ok=True)
        cfg = OmegaConf.create(
            {
                "ckpt": ckpt,
                "scale": scale,
                "input": str(lr_path),
                "output": str(sr_path),
                "overwrite": True,
                "predict": {
                    "axis": axis,
                    "batch_size": 8,
                    "tile": 256,
                    "overlap": 16,
                    "consistency": mode,
                },
            }
        )
        t0 = time.perf_counter()
        predict(cfg)
        seconds = time.perf_counter() - t0
        outputs[mode] = np.asarray(nib.load(str(sr_path)).get_fdata(dtype=np.float32))
    sr = outputs[consistency[0]]
    bic = interpolate_volume(lr, scale, axis, "bicubic")
    zf = interpolate_volume(lr, scale, axis, "zerofill")
    ours, base, sinc = (
        volume_scores(sr, hr, axis),
        volume_scores(bic, hr, axis),
        volume_scores(zf, hr, axis),
    )
    best = "zerofill" if sinc["psnr"] > base["psnr"] else "bicubic"
    extra: dict[str, float | str] = {
        "zerofill_psnr": sinc["psnr"],
        "zerofill_ssim": sinc["ssim"],
        "zerofill_hfen": sinc["hfen"],
        "best_baseline": best,
        "gain_best_db": ours["psnr"] - max(sinc["psnr"], base["psnr"]),
        "consistency": consistency[0],
    }
    for mode in consistency[1:]:
        other = volume_scores(outputs[mode], hr, axis)
        extra |= {
            f"sr_{mode}_psnr": other["psnr"],
            f"sr_{mode}_ssim": other["ssim"],
            f"gain_best_{mode}_db": other["psnr"] - max(sinc["psnr"], base["psnr"]),
        }
    realism_cols: dict[str, float] = {}
    if with_realism:
        realism_cols = {
            **{f"sr_{k}": v for k, v in realism(sr, hr, lr, scale, axis, degradation).items()},
            **{
                f"bicubic_{k}": v for k, v in realism(bic, hr, lr, scale, axis, degradation).items()
            },
        }
    return {
        "volume": Path(path).name,
        "scale": scale,
        "axis": axis,
        "intensity": intensity,
        "degradation": degradation,
        "shape": list(hr.shape),
        "hr_max": float(hr.max()),
        "bicubic_psnr": base["psnr"],
        "bicubic_ssim": base["ssim"],
        "sr_psnr": ours["psnr"],
        "sr_ssim": ours["ssim"],
        "gain_db": ours["psnr"] - base["psnr"],
        "bicubic_hfen": base["hfen"],
        "sr_hfen": ours["hfen"],
        **extra,
        **realism_cols,
        "predict_seconds": seconds,
    }


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
                    r = evaluate(
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
