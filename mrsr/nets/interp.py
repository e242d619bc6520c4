"""Interpolation baselines as modules, so ``model=bicubic`` evaluates like a network."""

from __future__ import annotations

from torch import Tensor, nn

from mrsr.ops import check_scale, upsample

MODES = ("nearest", "bilinear", "bicubic", "zerofill")


class Interpolation(nn.Module):
    """Nearest, bilinear, bicubic or zerofill (sinc) up-sampling by ``scale`` (clamped at 0)."""

    trainable = False

    def __init__(self, scale: int, mode: str = "bicubic") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.scale = check_scale(scale)
        self.mode = mode

    def forward(self, lr: Tensor) -> Tensor:
        return upsample(lr, self.scale, self.mode)
