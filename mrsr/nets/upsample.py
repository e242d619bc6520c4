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


def n_params(net: nn.Module) -> int:
    """Number of parameters of ``net`` (frozen ones too, e.g. an EMA copy)."""
    return sum(p.numel() for p in net.parameters())
