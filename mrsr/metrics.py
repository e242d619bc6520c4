"""Image-quality metrics and the one evaluation protocol used for every number.

Protocol (also in the README):
- Images are on the per-volume normalised scale (see ``normalise_volume``): 0 is the
  volume's minimum, 1 its robust maximum (99.5th percentile of the foreground). Nothing is
  clipped at the top: voxels brighter than that keep values above 1 in the target and in the
  prediction, so errors on the brightest structures count. Predictions are only clamped at
  0 (a magnitude image has nothing below its minimum).
- ``data_range = 1``: the peak of PSNR/SSIM is the volume's robust maximum (not its single
  brightest voxel, which one outlier could move), the same for every method.
- Whole slices are scored, background included, no border crop.
- Per-slice figures: PSNR, SSIM (Gaussian window 11, sigma 1.5, torchmetrics) and
  NMSE = ||y - y_hat||^2 / ||y||^2 per slice, averaged over all test slices.
- Per-volume figures (fastMRI style): PSNR and NMSE from the volume's summed squared
  error, SSIM as the mean over the volume's slices; then mean and std over volumes.
Each (volume, slice) pair counts once, also when distributed samplers repeat samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

DATA_RANGE = 1.0


def psnr(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """PSNR per image (dB) for (N, C, H, W) batches."""
    return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """SSIM per image for (N, C, H, W) batches (Gaussian 11x11, sigma 1.5)."""
    return structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")


def nmse(pred: Tensor, target: Tensor) -> Tensor:
    """||target - pred||^2 / ||target||^2 per image."""
    err = (target - pred).pow(2).flatten(1).sum(1)
    return err / target.pow(2).flatten(1).sum(1).clamp_min(1e-12)


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


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "nmse": False}


class SRMetrics(SliceTable):
    """Accumulates per-slice statistics; ``compute`` returns slice and volume summaries.

    Its values point different ways (NMSE is an error), so the torchmetrics flag
    ``higher_is_better`` is ``None`` and :data:`HIGHER_IS_BETTER` says it per value.
    """

    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(("sse", "n", "y2", "ssim", "psnr"), **kwargs)

    def update(self, pred: Tensor, target: Tensor, volume_idx: Tensor, slice_idx: Tensor) -> None:
        pred = pred.detach().float().clamp(min=0.0)
        target = target.detach().float()
        self.add(
            volume_idx,
            slice_idx,
            sse=(pred - target).pow(2).flatten(1).sum(1),
            n=torch.full((pred.shape[0],), float(pred[0].numel()), device=pred.device),
            y2=target.pow(2).flatten(1).sum(1),
            ssim=ssim(pred, target),
            psnr=psnr(pred, target),
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
        return out

    @staticmethod
    def per_volume(s: dict[str, Tensor]) -> dict[int, dict[str, float]]:
        result = {}
        for v in torch.unique(s["vol"]).tolist():
            m = s["vol"] == v
            mse = (s["sse"][m].sum() / s["n"][m].sum()).item()
            result[int(v)] = {
                "psnr": 10 * math.log10(DATA_RANGE**2 / max(mse, 1e-20)),
                "ssim": s["ssim"][m].mean().item(),
                "nmse": (s["sse"][m].sum() / s["y2"][m].sum().clamp_min(1e-12)).item(),
                "n_slices": int(m.sum().item()),
            }
        return result
