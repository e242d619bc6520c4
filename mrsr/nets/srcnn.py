"""Networks that refine the bicubic up-sampling of the input: SRCNN and VDSR.

SRCNN: Dong et al., "Image super-resolution using deep convolutional networks", TPAMI 2016.
VDSR: Kim et al., "Accurate image super-resolution using very deep convolutional networks",
CVPR 2016. Both take the interpolated image; convolutions keep the size ("same" padding, where
SRCNN's paper used valid convolutions and scored a cropped centre).
"""

from __future__ import annotations

from torch import Tensor, nn

from mrsr.ops import check_scale, upsample


class SRCNN(nn.Module):
    """Patch extraction (``k1`` x ``k1``, ``n1`` maps), non-linear mapping (``k2``, ``n2``) and
    reconstruction (``k3``), ReLU between, on the bicubic up-sampling; the paper's best
    setting is 9-5-5 with 64/32 maps."""

    trainable = True

    def __init__(
        self,
        scale: int,
        n1: int = 64,
        n2: int = 32,
        kernels: tuple[int, int, int] = (9, 5, 5),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        k1, k2, k3 = (int(k) for k in kernels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, n1, k1, padding=k1 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(n1, n2, k2, padding=k2 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(n2, in_channels, k3, padding=k3 // 2),
        )

    def forward(self, lr: Tensor) -> Tensor:
        return self.body(upsample(lr, self.scale))


class VDSR(nn.Module):
    """``depth`` 3x3 convs (``n_feats`` maps, ReLU between) predicting the residual that is
    added to the bicubic up-sampling (the paper: 20 layers of 64 maps)."""

    trainable = True

    def __init__(
        self, scale: int, depth: int = 20, n_feats: int = 64, in_channels: int = 1
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"VDSR depth={depth}: at least 2 layers")
        self.scale = check_scale(scale)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True)]
        for (
            m
        ) in layers:  # He initialisation, as in the paper: a deep plain ReLU stack trains from it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        last = nn.Conv2d(n_feats, in_channels, 3, padding=1)
        nn.init.zeros_(last.weight)  # starts as bicubic up-sampling
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def forward(self, lr: Tensor) -> Tensor:
        up = upsample(lr, self.scale)
        return up + self.body(up)
