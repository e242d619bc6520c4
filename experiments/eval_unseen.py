"""Score an SR model on whole NIfTI volumes it never saw, in the volumes' own units.

For each volume: the HR reference is the volume (in-plane size cropped to a multiple of the
scale); the LR input is made as the demo makes it (antialiased bicubic down-sampling of every
slice along ``--axis``, in the file's own intensities, clamped at 0); the LR volume is written
to a NIfTI and super-resolved by ``stage=predict`` (the code path users run). SR and the
bicubic up-sampling of the LR are scored against the HR over the whole volume:

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

from mrsr.data.degrade import degrade, intensity_range, upsample
from mrsr.data.readers import read_nifti
from mrsr.inference import write_nifti_atomic
from mrsr.metrics import RealismMetrics, hfen_terms, ssim
from mrsr.tasks.predict import predict

DEFAULT_VOLUMES = ["mrsr/assets/demo/seg3d_T1.nii.gz"]


def _per_slice(fn, vol: np.ndarray, axis: int) -> np.ndarray:
    """``fn`` applied to every slice along ``axis`` as one (N, 1, H, W) float64 batch."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, axis, 0)))[:, None].double()
    return np.moveaxis(fn(x)[:, 0].float().numpy(), 0, axis)


def degrade_volume(hr: np.ndarray, scale: int, axis: int, kind: str = "bicubic") -> np.ndarray:
    """The package's down-sampling of every slice (``bicubic``: antialiased, the bundled models'
    training degradation; ``kspace``: central k-space truncation, one they never saw), clamped
    at 0."""
    return _per_slice(lambda x: degrade(x, scale, kind), hr, axis)


def bicubic_volume(lr: np.ndarray, scale: int, axis: int) -> np.ndarray:
    return _per_slice(lambda x: upsample(x, scale), lr, axis)


def score(pred: np.ndarray, hr: np.ndarray, axis: int) -> dict[str, float]:
    peak = float(hr.max())
    mse = float(np.mean((pred.astype(np.float64) - hr) ** 2))
    p = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pred, axis, 0)))[:, None].float()
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(hr, axis, 0)))[:, None].float()
    s = torch.cat(
        [ssim(p[i : i + 16], t[i : i + 16], data_range=peak) for i in range(0, len(p), 16)]
    )
    terms = [hfen_terms(p[i : i + 16], t[i : i + 16]) for i in range(0, len(p), 16)]
    err, ref = (float(sum(x[j].sum() for x in terms)) for j in (0, 1))
    return {
        "psnr": 10 * np.log10(peak**2 / mse),
        "ssim": float(s.mean()),
        "hfen": (err / ref) ** 0.5,
    }


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
    metric = RealismMetrics(scale, kind)
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
) -> dict:
    vol = read_nifti(path)
    hr = crop_inplane(vol.data * np.float32(intensity), scale, axis)
    lr = degrade_volume(hr, scale, axis, degradation)
    lr_path, sr_path = tmp / "lr.nii.gz", tmp / "sr.nii.gz"
    sr_path.unlink(missing_ok=True)
    write_nifti_atomic(lr_path, lr, vol.affine)
    cfg = OmegaConf.create(
        {
            "ckpt": ckpt,
            "scale": scale,
            "input": str(lr_path),
            "output": str(sr_path),
            "overwrite": True,
            "predict": {"axis": axis, "batch_size": 8, "tile": 256, "overlap": 16},
        }
    )
    t0 = time.perf_counter()
    predict(cfg)
    seconds = time.perf_counter() - t0
    import nibabel as nib

    sr = np.asarray(nib.load(str(sr_path)).get_fdata(dtype=np.float32))
    bic = bicubic_volume(lr, scale, axis)
    ours, base = score(sr, hr, axis), score(bic, hr, axis)
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
        **{f"sr_{k}": v for k, v in realism(sr, hr, lr, scale, axis, degradation).items()},
        **{f"bicubic_{k}": v for k, v in realism(bic, hr, lr, scale, axis, degradation).items()},
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
        choices=["bicubic", "kspace"],
        help=(
            "how the LR input is made (kspace: an operator the bundled models were not trained on)"
        ),
    )
    ap.add_argument(
        "--out", default=None, help="record folder or .json file to write (default: print only)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.volumes:
            for axis in args.axis:
                for f, kind in ((f, k) for f in args.intensity for k in args.degradation):
                    r = evaluate(path, args.scale, args.ckpt, axis, f, Path(tmp), kind)
                    rows.append(r)
                    print(
                        f"{r['volume']:<40} x{args.scale} {kind:<7} axis {axis} "
                        f"intensity x{f:g}: bicubic "
                        f"{r['bicubic_psnr']:.2f} dB / {r['bicubic_ssim']:.4f}, "
                        f"SR {r['sr_psnr']:.2f} dB / "
                        f"{r['sr_ssim']:.4f} ({r['gain_db']:+.2f} dB), "
                        f"HFEN {r['bicubic_hfen']:.4f} -> "
                        f"{r['sr_hfen']:.4f}",
                        flush=True,
                    )
    gains = [r["gain_db"] for r in rows]
    print(f"mean gain {np.mean(gains):+.2f} dB over {len(rows)} volume(s)/setting(s)")
    if args.out:
        write_result(args.out, {"ckpt": args.ckpt or f"bundled x{args.scale}", "rows": rows})


if __name__ == "__main__":
    main()
