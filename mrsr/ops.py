"""Tensor operations shared by data, nets and losses.

Nothing here depends on another ``mrsr`` module except :mod:`mrsr.errors`, so networks can use
these without importing the data package. Tensors are float ``(N, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrsr.errors import ConfigError


def check_scale(scale: int) -> int:
    if scale not in (2, 4):
        raise ConfigError(f"scale={scale} is not supported: use 2 or 4")
    return int(scale)


def upsample(lr: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """Interpolation baseline: nearest, bilinear or bicubic up-sampling (ringing below 0
    removed)."""
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(lr, scale_factor=scale, mode=mode, **kwargs).clamp(min=0.0)
