"""The SPEC's SR generator: SRResNet layout (conv+ReLU, residual blocks, pixel shuffle)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.nets.upsample import PixelShuffleDirect, check_upsampler, icnr_
from mrsr.ops import check_scale, zerofill_upsample

SKIPS = ("bicubic", "zerofill")


class ResidualBlock(nn.Module):
    """3x3 conv, (BN), ReLU, 3x3 conv, (BN), plus the identity."""

    def __init__(self, n_feats: int, batch_norm: bool = True) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm2d(n_feats) if batch_norm else nn.Identity()

        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1, bias=not batch_norm),
            norm(),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1, bias=not batch_norm),
            norm(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """Generator: head conv+ReLU, ``n_blocks`` residual blocks, a conv (+BN) closing the
    global skip from the head, one conv+pixel-shuffle(x2)+ReLU stage per factor of two,
    and a final 9x9 conv at the output resolution (``upsampler="pixelshuffle"``, the SPEC).

    ``upsampler="pixelshuffledirect"`` replaces the up-sampling stages and the final conv by
    one 3x3 conv to ``scale**2`` maps at the input resolution and a pixel shuffle (ESPCN;
    SwinIR's lightweight up-sampler): 1.5x (x2) and 3.4x (x4) faster per training step on
    the demo's CPU patches (``experiments/bench_upsampler.py``; docs/results/quickstart.md
    compares them at equal time).

    With ``residual_bicubic=True`` the network predicts a residual that is added to the
    bicubic up-sampling of the input (not in the SPEC; off by default); its last conv then
    starts at zero, so an untrained network returns exactly the bicubic up-sampling.
    ``skip="zerofill"`` adds the residual to the zero-filled (sinc) up-sampling instead, the
    scanner's own interpolation of an LR image acquired in k-space.
    Pixel-shuffle convs start with ICNR (Aitken et al. 2017: no checkerboard at step 0).
    Any ``(N, C, h, w)`` input gives ``(N, C, h*scale, w*scale)``. ``scale=1`` makes a
    same-size restorer (through-plane SR: the input is already interpolated to the output
    grid; with ``residual_bicubic`` the residual is added to the input itself).
    """

    trainable = True

    def __init__(
        self,
        scale: int,
        n_blocks: int = 16,
        n_feats: int = 64,
        batch_norm: bool = True,
        in_channels: int = 1,
        residual_bicubic: bool = False,
        upsampler: str = "pixelshuffle",
        skip: str = "bicubic",
    ) -> None:
        super().__init__()
        check_upsampler(upsampler)
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}")
        self.skip = skip
        self.scale = 1 if scale == 1 else check_scale(scale)
        self.residual_bicubic = residual_bicubic
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, n_feats, 9, padding=4), nn.ReLU(inplace=True)
        )
        self.body = nn.Sequential(*[ResidualBlock(n_feats, batch_norm) for _ in range(n_blocks)])
        self.body_tail = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(n_feats) if batch_norm else nn.Identity(),
        )
        ups: list[nn.Module] = []
        if upsampler == "pixelshuffle":
            for _ in range(self.scale.bit_length() - 1):
                ups += [
                    nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1),
                    nn.PixelShuffle(2),
                    nn.ReLU(inplace=True),
                ]
            last = nn.Conv2d(n_feats, in_channels, 9, padding=4)
            self.tail: nn.Module = last
            for m in ups:
                if isinstance(m, nn.Conv2d):
                    icnr_(m.weight, 2)
        else:  # pixelshuffledirect
            self.tail = PixelShuffleDirect(n_feats, in_channels, self.scale)
            last = self.tail[0]
        self.upsample = nn.Sequential(*ups)
        if residual_bicubic:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def last_conv(self) -> nn.Conv2d:
        """The conv that produces the output (zero at the start with ``residual_bicubic``)."""
        return self.tail if isinstance(self.tail, nn.Conv2d) else self.tail[0]

    def forward(self, x: Tensor) -> Tensor:
        feat = self.head(x)
        feat = feat + self.body_tail(self.body(feat))
        out = self.tail(self.upsample(feat))
        if self.residual_bicubic:
            out = out + self.skip_path(x)
        return out

    def skip_path(self, x: Tensor) -> Tensor:
        """The up-sampled input the residual is added to (``residual_bicubic``)."""
        if self.scale == 1:
            return x
        if self.skip == "zerofill":
            return zerofill_upsample(x.float(), self.scale).to(x.dtype)
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
