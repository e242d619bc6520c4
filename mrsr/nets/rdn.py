"""RDN: Zhang et al., "Residual dense network for image super-resolution", CVPR 2018.
Residual dense blocks (densely connected convs, 1x1 local fusion, local residual), global
feature fusion of every block's output, a global skip and pixel-shuffle up-sampling. Paper
size: ``n_blocks`` D = 16, ``n_layers`` C = 8, ``growth`` G = 64, ``n_feats`` G0 = 64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrsr.nets.upsample import PixelShuffleUpsampler
from mrsr.ops import check_scale


class ResidualDenseBlock(nn.Module):
    """``n_layers`` conv3x3+ReLU, each fed the concatenation of all before it; a 1x1 conv
    fuses them back to ``n_feats`` and the block's input is added."""

    def __init__(self, n_feats: int, growth: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(n_feats + i * growth, growth, 3, padding=1), nn.ReLU(inplace=True)
            )
            for i in range(n_layers)
        )
        self.fuse = nn.Conv2d(n_feats + n_layers * growth, n_feats, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return x + self.fuse(torch.cat(feats, dim=1))


class RDN(nn.Module):
    """Two shallow convs, ``n_blocks`` residual dense blocks, global feature fusion (1x1 + 3x3)
    plus the first shallow features, pixel-shuffle up-sampling, output conv."""

    trainable = True

    def __init__(
        self,
        scale: int,
        n_blocks: int = 16,
        n_layers: int = 8,
        growth: int = 64,
        n_feats: int = 64,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.shallow1 = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.shallow2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.blocks = nn.ModuleList(
            ResidualDenseBlock(n_feats, growth, n_layers) for _ in range(n_blocks)
        )
        self.fusion = nn.Sequential(
            nn.Conv2d(n_blocks * n_feats, n_feats, 1), nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.tail = nn.Sequential(
            PixelShuffleUpsampler(n_feats, self.scale),
            nn.Conv2d(n_feats, in_channels, 3, padding=1),
        )

    def forward(self, lr: Tensor) -> Tensor:
        f1 = self.shallow1(lr)
        x = self.shallow2(f1)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return self.tail(f1 + self.fusion(torch.cat(outs, dim=1)))
