"""SwinIR: Liang et al., "SwinIR: image restoration using Swin Transformer", ICCVW 2021, with
MONAI's (shifted-)window attention layers (``monai.networks.nets.swin_unetr.BasicLayer``,
relative position bias, 2D) as the Swin blocks.

Shallow conv, residual Swin Transformer blocks (Swin layer + conv3x3 + skip), layer norm, a conv
closing the global skip, then up-sampling: ``pixelshuffle`` (classical SR: conv+LeakyReLU,
pixel-shuffle stages, conv) or ``pixelshuffledirect`` (lightweight SR: one conv and a shuffle).
Paper sizes: classical 180 channels, 6 blocks of depth 6, 6 heads, window 8, MLP ratio 2;
lightweight 60 channels, 4 blocks of depth 6. Any input size: as in SwinIR, the input is
mirror-padded once to a multiple of the window (edge-replicated where it is shorter than the
pad) and the output cropped back, so no block sees zero padding and the image is never smaller
than a window. Linear layers start as SwinIR's (truncated normal, std 0.02). The RGB mean shift
is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from monai.networks.nets.swin_unetr import BasicLayer
from torch import Tensor, nn

from mrsr.nets.upsample import PixelShuffleDirect, PixelShuffleUpsampler, check_upsampler
from mrsr.ops import check_scale


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RSTB(nn.Module):
    """Residual Swin Transformer block: ``depth`` Swin blocks (shifted windows every other
    block), a conv3x3, plus the input."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: int,
        mlp_ratio: float,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.swin = BasicLayer(
            dim=dim,
            depth=depth,
            num_heads=heads,
            window_size=(window, window),
            drop_path=drop_path,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(self.swin(x.contiguous()))


class SwinIR(nn.Module):
    """SwinIR for single-channel images (see the module docstring)."""

    trainable = True

    def __init__(
        self,
        scale: int,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        upsampler: str = "pixelshuffle",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        check_upsampler(upsampler)
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} differ in length"
            )
        if embed_dim % max(num_heads) != 0:
            raise ValueError(
                f"embed_dim={embed_dim} is not divisible by every head count {list(num_heads)}"
            )
        self.scale = check_scale(scale)
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, padding=1)
        self.norm_in = ChannelNorm(embed_dim)
        # stochastic depth
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.blocks = nn.Sequential(
            *[
                RSTB(embed_dim, d, h, window_size, mlp_ratio, rates[s : s + d])
                for d, h, s in zip(depths, num_heads, starts, strict=True)
            ]
        )
        self.norm_out = ChannelNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        if upsampler == "pixelshuffle":
            feats = 64
            self.tail: nn.Module = nn.Sequential(
                nn.Conv2d(embed_dim, feats, 3, padding=1),
                nn.LeakyReLU(inplace=True),
                PixelShuffleUpsampler(feats, self.scale),
                nn.Conv2d(feats, in_channels, 3, padding=1),
            )
        else:
            self.tail = PixelShuffleDirect(embed_dim, in_channels, self.scale)
        self.window_size = int(window_size)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def pad(self, x: Tensor) -> Tensor:
        """Mirror-pad bottom and right to a multiple of the window (replicate where too short)."""
        h, w = x.shape[-2:]
        ph, pw = -h % self.window_size, -w % self.window_size
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def forward(self, lr: Tensor) -> Tensor:
        h, w = lr.shape[-2:]
        x = self.conv_first(self.pad(lr))
        feat = self.norm_out(self.blocks(self.norm_in(x)))
        return self.tail(x + self.conv_after_body(feat))[..., : h * self.scale, : w * self.scale]
