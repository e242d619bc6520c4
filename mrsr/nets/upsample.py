"""Sub-pixel up-sampling shared by the SR networks: ICNR initialisation and pixel-shuffle stages."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def icnr_(weight: Tensor, factor: int) -> Tensor:
    """ICNR: initialise a conv followed by ``PixelShuffle(factor)`` so that its output is a
    nearest-neighbour up-sampling of a (Kaiming-initialised) lower-resolution conv."""
    out_ch = weight.shape[0] // factor**2
    sub = torch.empty(out_ch, *weight.shape[1:])
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(factor**2, dim=0))
    return weight


UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect")


def check_upsampler(name: str) -> str:
    if name not in UPSAMPLERS:
        raise ValueError(f"upsampler={name!r}: expected one of {', '.join(UPSAMPLERS)}")
    return name


class PixelShuffleUpsampler(nn.Sequential):
    """One 3x3 conv to ``4 * n_feats`` maps and a pixel shuffle (x2) per factor of two of
    ``scale`` (EDSR, RDN, RCAN, SwinIR-classical), ICNR-initialised; ``scale`` is a power of two."""

    def __init__(self, n_feats: int, scale: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            conv = nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1)
            icnr_(conv.weight, 2)
            layers += [conv, nn.PixelShuffle(2)]
        super().__init__(*layers)


class PixelShuffleDirect(nn.Sequential):
    """``pixelshuffledirect`` (ESPCN; SwinIR's lightweight up-sampler): one 3x3 conv to
    ``out_channels * scale**2`` maps, ICNR-initialised, and one pixel shuffle."""

    def __init__(self, n_feats: int, out_channels: int, scale: int) -> None:
        conv = nn.Conv2d(n_feats, out_channels * scale**2, 3, padding=1)
        icnr_(conv.weight, scale)
        super().__init__(conv, nn.PixelShuffle(scale))
