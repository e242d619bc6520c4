"""RCAN: Zhang et al., "Image super-resolution using very deep residual channel attention
networks", ECCV 2018. Residual groups of residual channel-attention blocks, long and short
skips, pixel-shuffle up-sampling. Paper size: 10 groups of 20 blocks, 64 maps, reduction 16.
The RGB mean shift is left out: inputs are normalised MR intensities.
"""

from __future__ import annotations

from torch import Tensor, nn

from mrsr.nets.edsr import GlobalSkipSR


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pooling, 1x1 conv down by ``reduction``, ReLU,
    1x1 conv up, sigmoid, times the input."""

    def __init__(self, n_feats: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, n_feats // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(n_feats, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, n_feats, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """conv3x3, ReLU, conv3x3, channel attention, plus the identity."""

    def __init__(self, n_feats: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            ChannelAttention(n_feats, reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``n_blocks`` RCABs and a conv3x3, plus the group's input (short skip)."""

    def __init__(self, n_feats: int, n_blocks: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(n_feats, reduction) for _ in range(n_blocks)],
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RCAN(GlobalSkipSR):
    """``n_groups`` residual groups (the long skip is :class:`GlobalSkipSR`'s)."""

    def __init__(
        self,
        scale: int,
        n_groups: int = 10,
        n_blocks: int = 20,
        n_feats: int = 64,
        reduction: int = 16,
        in_channels: int = 1,
    ) -> None:
        groups = [ResidualGroup(n_feats, n_blocks, reduction) for _ in range(n_groups)]
        super().__init__(scale, n_feats, groups, in_channels)
