"""An SR model scored on a whole NIfTI volume it never saw, in the volume's own units.

:func:`evaluate_unseen`: the HR reference is the volume (in-plane size cropped to a multiple of
the scale); the LR input is made from every slice along ``axis`` by an operator of
:data:`mrsr.data.acquisition.MATRIX_OPERATORS` (:func:`degrade_volume`), written to a NIfTI
and super-resolved by ``stage=predict`` (the task users run, taken from the command line's
registry, :func:`mrsr.dispatch.get_task`). SR, the bicubic and the zero-filling up-sampling of
the LR are scored against the HR over the whole volume (:func:`mrsr.metrics.volume_scores`:
peak = the HR volume's maximum), with the realism, structure and consistency slice means
(:func:`realism_means`) on the volume's normalised scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mrsr.data.acquisition import MATRIX_OPERATORS
from mrsr.data.degrade import degrade, intensity_range
from mrsr.data.readers import read_nifti
from mrsr.inference import write_nifti_atomic
from mrsr.metrics.distortion import volume_scores
from mrsr.metrics.realism import RealismMetrics
from mrsr.ops import upsample


def _per_slice(
    fn: Callable[[torch.Tensor], torch.Tensor], vol: np.ndarray, axis: int
) -> np.ndarray:
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


def realism_means(
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
    """``vol`` centre-cropped to a multiple of ``scale`` on the two axes other than ``axis``."""
    index = [slice(None)] * 3
    for ax in range(3):
        if ax != axis:
            n = vol.shape[ax] - vol.shape[ax] % scale
            start = (vol.shape[ax] - n) // 2
            index[ax] = slice(start, start + n)
    return vol[tuple(index)]


def predict_volume(
    lr_path: Path, sr_path: Path, ckpt: str | None, scale: int, axis: int, consistency: str
) -> tuple[np.ndarray, float]:
    """``stage=predict`` of ``lr_path`` into ``sr_path`` with ``predict.consistency`` (the
    bundled model of ``scale`` without ``ckpt``): the SR volume and the task's seconds."""
    import nibabel as nib

    from mrsr.dispatch import get_task

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
                "consistency": consistency,
            },
        }
    )
    t0 = time.perf_counter()
    get_task("predict")(cfg)
    seconds = time.perf_counter() - t0
    return np.asarray(nib.load(str(sr_path)).get_fdata(dtype=np.float32)), seconds


def evaluate_unseen(
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
    """The row of volume ``path`` (times ``intensity``) made LR by ``degradation`` along
    ``axis`` and super-resolved by checkpoint ``ckpt`` (files in ``tmp``): PSNR, SSIM and HFEN
    of SR, bicubic and zero-filling, the gain over the better baseline, each further
    ``consistency`` mode's SR, the realism columns (``with_realism``) and predict's seconds
    (of the last mode)."""
    vol = read_nifti(path)
    hr = crop_inplane(vol.data * np.float32(intensity), scale, axis)
    lr = degrade_volume(hr, scale, axis, degradation, seed)
    lr_path, sr_path = tmp / "lr.nii.gz", tmp / "sr.nii.gz"
    write_nifti_atomic(lr_path, lr, vol.affine)
    outputs: dict[str, np.ndarray] = {}
    for mode in consistency:
        outputs[mode], seconds = predict_volume(lr_path, sr_path, ckpt, scale, axis, mode)
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
            f"{name}_{k}": v
            for name, pred in (("sr", sr), ("bicubic", bic))
            for k, v in realism_means(pred, hr, lr, scale, axis, degradation).items()
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
