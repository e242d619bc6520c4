"""EDSR: Lim et al., "Enhanced deep residual networks for single image super-resolution",
CVPRW 2017. Residual blocks without batch norm, scaled by ``res_scale``, a global skip and
pixel-shuffle up-sampling. Paper size: 32 blocks of 256 maps, ``res_scale`` 0.1 (EDSR-baseline:
16 blocks of 64). The RGB mean shift is left out: inputs are normalised MR intensities.
"""

from __future__ import annotations

from torch import Tensor, nn

from mrsr.nets.upsample import PixelShuffleUpsampler
from mrsr.ops import check_scale


class ResBlock(nn.Module):
    """conv3x3, ReLU, conv3x3, times ``res_scale``, plus the identity."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = float(res_scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class GlobalSkipSR(nn.Module):
    """EDSR's layout, shared with RCAN: head conv; ``blocks`` and a conv closing the global
    skip from the head; pixel-shuffle up-sampling and a tail conv."""

    trainable = True

    def __init__(
        self, scale: int, n_feats: int, blocks: list[nn.Module], in_channels: int = 1
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.body = nn.Sequential(*blocks, nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.tail = nn.Sequential(
            PixelShuffleUpsampler(n_feats, self.scale),
            nn.Conv2d(n_feats, in_channels, 3, padding=1),
        )

    def forward(self, lr: Tensor) -> Tensor:
        feat = self.head(lr)
        return self.tail(feat + self.body(feat))


class EDSR(GlobalSkipSR):
    """``n_blocks`` residual blocks of ``n_feats`` maps in :class:`GlobalSkipSR`."""

    def __init__(
        self,
        scale: int,
        n_blocks: int = 32,
        n_feats: int = 256,
        res_scale: float = 0.1,
        in_channels: int = 1,
    ) -> None:
        super().__init__(
            scale, n_feats, [ResBlock(n_feats, res_scale) for _ in range(n_blocks)], in_channels
        )
