"""Image-quality metrics and the one evaluation protocol used for every number.

Protocol (also in docs/reference/metrics.md):
- Images are on the per-volume normalised scale (see ``normalise_volume``): 0 is the
  volume's minimum, 1 its robust maximum (99.5th percentile of the foreground). Nothing is
  clipped at the top: voxels brighter than that keep values above 1 in the target and in the
  prediction, so errors on the brightest structures count. Predictions are only clamped at
  0 (a magnitude image has nothing below its minimum).
- ``data_range = 1``: the peak of PSNR/SSIM is the volume's robust maximum (not its single
  brightest voxel, which one outlier could move), the same for every method.
- Whole slices are scored, background included, no border crop (except the masked metrics
  below, which score the foreground only).
- All metrics are computed in float32 or float64, also under (bf16/fp16) autocast.
- Per-slice figures, averaged over all test slices:
  - PSNR = 10 log10(1 / MSE) and SSIM (Gaussian window 11, sigma 1.5, torchmetrics; the
    mean of the SSIM map, which has the image size, torchmetrics pads by reflection);
  - NMSE = ||y - y_hat||^2 / ||y||^2;
  - HFEN (high-frequency error norm, Ravishankar & Bresler 2011; lower is better)
    = ||LoG(y_hat) - LoG(y)||_2 / ||LoG(y)||_2, with LoG the Laplacian-of-Gaussian filter
    of MATLAB's ``fspecial('log', 15, 1.5)``: on the 15 x 15 grid -7..7, the Gaussian
    exp(-r^2 / (2 sigma^2)) normalised to sum 1, times (r^2 - 2 sigma^2) / sigma^4, minus
    its mean (so the kernel sums to 0); sigma = 1.5. It is applied by ``conv2d`` with
    ``reflect`` padding of 7 pixels, so the response has the image size (images need at
    least 8 x 8 pixels). Its scale cancels in the ratio; ||LoG(y)||^2 is clamped at 1e-12
    like ||y||^2 in NMSE;
  - foreground-masked PSNR_fg and SSIM_fg: the foreground is ``y > FOREGROUND`` with
    ``FOREGROUND = 0.05`` (5 % of the robust maximum) on the target. PSNR_fg =
    10 log10(1 / MSE over the foreground pixels); SSIM_fg = the mean of the same SSIM map
    as SSIM over the foreground pixels. Slices without foreground pixels are left out of
    these two means (they are neither 0 nor NaN there).
- Per-volume figures (fastMRI style), then mean and std (population) over volumes:
  PSNR and NMSE from the volume's summed squared error; SSIM as the mean over the volume's
  slices; HFEN = sqrt(sum of ||LoG error||^2) / sqrt(sum of ||LoG(y)||^2) over the volume's
  slices; PSNR_fg from the volume's summed foreground squared error over its foreground
  pixel count; SSIM_fg as the mean over the volume's slices that have foreground (volumes
  without any foreground are left out of the PSNR_fg/SSIM_fg volume mean and std).
Each (volume, slice) pair counts once, also when distributed samplers repeat samples.

Whole volumes in their own units (:func:`volume_scores`, the protocol of the README's table and
of the through-plane results): PSNR with peak = the reference volume's maximum, from the mean
squared error over every voxel; SSIM (data range = that peak) as the mean over the slices along
the chosen axis; HFEN as above over those slices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

DATA_RANGE = 1.0
FOREGROUND = 0.05  # foreground of the masked metrics: target > 5 % of the robust maximum
LOG_SIGMA = 1.5  # HFEN's Laplacian-of-Gaussian
LOG_SIZE = 15
SUMMARY = ("psnr", "ssim", "nmse", "hfen", "psnr_fg", "ssim_fg")  # the headline slice means


def psnr(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """PSNR per image (dB) for (N, C, H, W) batches."""
    return peak_signal_noise_ratio(
        pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3)
    )


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """SSIM per image for (N, C, H, W) batches (Gaussian 11x11, sigma 1.5)."""
    return structural_similarity_index_measure(
        pred, target, data_range=data_range, reduction="none"
    )


def nmse(pred: Tensor, target: Tensor) -> Tensor:
    """||target - pred||^2 / ||target||^2 per image."""
    err = (target - pred).pow(2).flatten(1).sum(1)
    return err / target.pow(2).flatten(1).sum(1).clamp_min(1e-12)


def log_kernel(sigma: float = LOG_SIGMA, size: int = LOG_SIZE) -> Tensor:
    """The ``size`` x ``size`` Laplacian-of-Gaussian kernel of MATLAB's ``fspecial('log')``
    (float64): normalised Gaussian times (r^2 - 2 sigma^2) / sigma^4, minus its mean."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    g = torch.exp(-r2 / (2 * sigma**2))
    h = g / g.sum() * (r2 - 2 * sigma**2) / sigma**4
    return h - h.mean()


def log_filter(x: Tensor, sigma: float = LOG_SIGMA, size: int = LOG_SIZE) -> Tensor:
    """LoG response of (N, C, H, W) images, per channel, with reflect padding (same size),
    in float32 also under autocast."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        c, pad = x.shape[1], size // 2
        k = (
            log_kernel(sigma, size)
            .to(device=x.device, dtype=torch.float32)
            .expand(c, 1, size, size)
        )
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k, groups=c)


def log_size(sigma: float) -> int:
    """Side of the LoG kernel of ``sigma``: the protocol's 15 x 15 at sigma 1.5 scaled with
    sigma, 2 floor(7 sigma / 1.5 + 0.5) + 1 (15 for sigma 1.5, 7 for 0.7)."""
    return 2 * math.floor((LOG_SIZE // 2) * sigma / LOG_SIGMA + 0.5) + 1


def hfen_terms(
    pred: Tensor, target: Tensor, sigma: float = LOG_SIGMA, size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per image: ||LoG(pred) - LoG(target)||^2 and ||LoG(target)||^2 (float64 sums), with
    the ``size`` x ``size`` LoG of ``sigma`` (default: the protocol's sigma 1.5; ``size``
    by default :func:`log_size`, 15 for the protocol's sigma).

    The filter is linear, so the error's response is computed as LoG(pred - target)
    (the same up to rounding, without the cancellation)."""
    n = pred.shape[0]
    size = log_size(sigma) if size is None else size
    resp = log_filter(
        torch.cat([pred.float() - target.float(), target.float()]), sigma, size
    ).double()
    sq = resp.pow(2).flatten(1).sum(1)
    return sq[:n], sq[n:]


def hfen(pred: Tensor, target: Tensor, sigma: float = LOG_SIGMA, size: int | None = None) -> Tensor:
    """HFEN per image: ||LoG(pred) - LoG(target)||_2 / ||LoG(target)||_2 (lower is better),
    LoG as in :func:`hfen_terms` (the protocol's HFEN with the defaults)."""
    err2, y2 = hfen_terms(pred, target, sigma, size)
    return (err2 / y2.clamp_min(1e-12)).sqrt().float()


def foreground(target: Tensor) -> Tensor:
    """The foreground mask of the masked metrics: ``target > FOREGROUND``."""
    return target > FOREGROUND


def _ssim_map(
    pred: Tensor, target: Tensor, data_range: float = DATA_RANGE
) -> tuple[Tensor, Tensor]:
    """SSIM per image and its map (the image's size): the same settings as :func:`ssim`."""
    return structural_similarity_index_measure(
        pred, target, data_range=data_range, reduction="none", return_full_image=True
    )


def _fg_terms(pred: Tensor, target: Tensor, ssim_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: foreground squared error, foreground pixel count, SSIM-map sum over it."""
    mask = foreground(target).flatten(1)
    sse = ((pred.double() - target.double()).pow(2).flatten(1) * mask).sum(1)
    return sse, mask.sum(1).double(), (ssim_map.double().flatten(1) * mask).sum(1)


def _psnr_from(sse: Tensor, n: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """10 log10(data_range^2 / (sse / n)), MSE clamped at 1e-20 (where ``n`` > 0)."""
    mse = (sse / n.clamp_min(1)).clamp_min(1e-20)
    return 10 * torch.log10(data_range**2 / mse)


def psnr_fg(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """PSNR per image over its foreground pixels (``target > FOREGROUND``); NaN for an
    image without foreground (callers leave those out)."""
    sse, n, _ = _fg_terms(pred, target, torch.zeros_like(target))
    return torch.where(n > 0, _psnr_from(sse, n, data_range), torch.nan).float()


def ssim_fg(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Mean SSIM map per image over its foreground pixels; NaN without foreground."""
    _, ssim_map = _ssim_map(pred, target, data_range)
    _, n, total = _fg_terms(pred, target, ssim_map)
    return torch.where(n > 0, total / n.clamp_min(1), torch.nan).float()


class SliceTable(Metric):
    """Per-slice values keyed by (volume, slice), gathered over processes.

    Each (volume, slice) pair is kept once, so the samples that distributed samplers
    repeat to even out ranks are never double counted. ``compute`` returns the columns.
    """

    full_state_update = False

    def __init__(self, columns: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.columns = tuple(columns)
        for name in ("vol", "sl", *self.columns):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def add(self, volume_idx: Tensor, slice_idx: Tensor, **values: Tensor) -> None:
        """Append one batch: a value per slice for every column."""
        self.vol.append(torch.as_tensor(volume_idx).detach().long().reshape(-1).to(self.device))
        self.sl.append(torch.as_tensor(slice_idx).detach().long().reshape(-1).to(self.device))
        for name in self.columns:
            getattr(self, name).append(values[name].detach().double().reshape(-1).to(self.device))

    def update(self, volume_idx: Tensor, slice_idx: Tensor, **values: Tensor) -> None:
        self.add(volume_idx, slice_idx, **values)

    def _table(self) -> dict[str, Tensor]:
        def cat(x):
            if isinstance(x, list):
                return torch.cat(x) if x else torch.zeros(0, device=self.device)
            return x

        state = {k: cat(getattr(self, k)) for k in ("vol", "sl", *self.columns)}
        if state["vol"].numel() == 0:
            return state
        key = state["vol"].long() * 1_000_000 + state["sl"].long()
        uniq, inverse = torch.unique(key, return_inverse=True)
        first = torch.full_like(uniq, key.numel()).scatter_reduce(
            0, inverse, torch.arange(key.numel(), device=key.device), reduce="amin"
        )
        return {k: v[first] for k, v in state.items()}

    def compute(self) -> dict[str, Tensor]:
        return self._table()


HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "nmse": False,
    "hfen": False,
    "psnr_fg": True,
    "ssim_fg": True,
}


class SRMetrics(SliceTable):
    """Accumulates per-slice statistics; ``compute`` returns slice and volume summaries.

    Its values point different ways (NMSE is an error), so the torchmetrics flag
    ``higher_is_better`` is ``None`` and :data:`HIGHER_IS_BETTER` says it per value.
    """

    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(
            ("sse", "n", "y2", "ssim", "psnr", "log_err2", "log_y2", "fg_sse", "fg_n", "fg_ssim"),
            **kwargs,
        )

    def update(self, pred: Tensor, target: Tensor, volume_idx: Tensor, slice_idx: Tensor) -> None:
        with torch.autocast(
            pred.device.type, enabled=False
        ):  # the protocol is float32, also under AMP
            pred = pred.detach().float().clamp(min=0.0)
            target = target.detach().float()
            ssim_val, ssim_map = _ssim_map(pred, target)
            log_err2, log_y2 = hfen_terms(pred, target)
            fg_sse, fg_n, fg_ssim = _fg_terms(pred, target, ssim_map)
            self.add(
                volume_idx,
                slice_idx,
                sse=(pred - target).pow(2).flatten(1).sum(1),
                n=torch.full((pred.shape[0],), float(pred[0].numel()), device=pred.device),
                y2=target.pow(2).flatten(1).sum(1),
                ssim=ssim_val,
                psnr=psnr(pred, target),
                log_err2=log_err2,
                log_y2=log_y2,
                fg_sse=fg_sse,
                fg_n=fg_n,
                fg_ssim=fg_ssim,
            )

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        s = self._table()
        if s["vol"].numel() == 0:
            return {}
        out = {
            "psnr": s["psnr"].mean().item(),
            "ssim": s["ssim"].mean().item(),
            "nmse": (s["sse"] / s["y2"].clamp_min(1e-12)).mean().item(),
            "n_slices": float(s["vol"].numel()),
        }
        per_vol = self.per_volume(s)
        for name in ("psnr", "ssim", "nmse"):
            vals = torch.tensor([v[name] for v in per_vol.values()], dtype=torch.float64)
            out[f"{name}_vol"] = vals.mean().item()
            out[f"{name}_vol_std"] = vals.std(unbiased=False).item()
        out["n_volumes"] = float(len(per_vol))
        # HFEN and the foreground-masked metrics; slices / volumes without foreground are left out
        fg = s["fg_n"] > 0
        out["hfen"] = (s["log_err2"] / s["log_y2"].clamp_min(1e-12)).sqrt().mean().item()
        out["psnr_fg"] = (
            _psnr_from(s["fg_sse"][fg], s["fg_n"][fg]).mean().item() if fg.any() else math.nan
        )
        out["ssim_fg"] = (s["fg_ssim"][fg] / s["fg_n"][fg]).mean().item() if fg.any() else math.nan
        for name in ("hfen", "psnr_fg", "ssim_fg"):
            vals = torch.tensor(
                [v[name] for v in per_vol.values() if not math.isnan(v[name])], dtype=torch.float64
            )
            out[f"{name}_vol"] = vals.mean().item() if vals.numel() else math.nan
            out[f"{name}_vol_std"] = vals.std(unbiased=False).item() if vals.numel() else math.nan
        out["n_slices_fg"] = float(fg.sum().item())
        return out

    @staticmethod
    def per_volume(s: dict[str, Tensor]) -> dict[int, dict[str, float]]:
        result = {}
        for v in torch.unique(s["vol"]).tolist():
            m = s["vol"] == v
            mse = (s["sse"][m].sum() / s["n"][m].sum()).item()
            fg = m & (s["fg_n"] > 0)
            has_fg = bool(fg.any())
            result[int(v)] = {
                "psnr": 10 * math.log10(DATA_RANGE**2 / max(mse, 1e-20)),
                "ssim": s["ssim"][m].mean().item(),
                "nmse": (s["sse"][m].sum() / s["y2"][m].sum().clamp_min(1e-12)).item(),
                "n_slices": int(m.sum().item()),
                "hfen": (s["log_err2"][m].sum() / s["log_y2"][m].sum().clamp_min(1e-12))
                .sqrt()
                .item(),
                "psnr_fg": _psnr_from(s["fg_sse"][m].sum(), s["fg_n"][m].sum()).item()
                if has_fg
                else math.nan,
                "ssim_fg": (s["fg_ssim"][fg] / s["fg_n"][fg]).mean().item() if has_fg else math.nan,
            }
        return result


def volume_scores(pred: np.ndarray, ref: np.ndarray, axis: int) -> dict[str, float]:
    """PSNR, SSIM and HFEN of a whole volume ``pred`` against ``ref`` (same shape, the
    reference's own units; slices along ``axis`` for SSIM and HFEN): the whole-volume protocol
    in the module docstring."""
    peak = float(ref.max())
    mse = float(np.mean((pred.astype(np.float64) - ref) ** 2))
    p = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pred, axis, 0)))[:, None].float()
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ref, axis, 0)))[:, None].float()
    s = torch.cat(
        [ssim(p[i : i + 16], t[i : i + 16], data_range=peak) for i in range(0, len(p), 16)]
    )
    terms = [hfen_terms(p[i : i + 16], t[i : i + 16]) for i in range(0, len(p), 16)]
    err, total = (float(sum(x[j].sum() for x in terms)) for j in (0, 1))
    return {
        "psnr": 10 * np.log10(peak**2 / mse) if mse > 0 else math.inf,
        "ssim": float(s.mean()),
        "hfen": (err / total) ** 0.5,
    }
