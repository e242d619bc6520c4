"""2D swapping autoencoder (structure code z_s, texture vector z_t) for stage ``disent``.

Paper sizes: 256x256 input, four 3x3 conv blocks with 64, 64, 32, 32 channels, max pooling
after each block, z_s 64x64 (taken after two poolings, the 1/4-resolution point), z_t 256-d
(global average pooling of the deepest features and a linear layer). The generator decodes
z_s and injects z_t by AdaIN-style modulation in every block (Park et al., NeurIPS 2020).
Every input, whatever its size, is resized to ``img_size`` first, so LR, SR and HR images
give codes of equal shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_to(x: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) images to ``size`` x ``size``."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions with LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.2, True),
    )


class StructureTextureEncoder(nn.Module):
    """E(x) -> (z_s, z_t): z_s (N, structure_channels, img_size/4, img_size/4), z_t (N, D)."""

    def __init__(
        self,
        img_size: int = 256,
        enc_channels: Sequence[int] = (64, 64, 32, 32),
        structure_channels: int = 8,
        texture_dim: int = 256,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in enc_channels]
        if len(chans) < 3:
            raise ValueError("enc_channels needs at least 3 blocks (z_s is taken after the second)")
        if img_size % 2 ** len(chans):
            raise ValueError(f"img_size {img_size} must be divisible by 2**{len(chans)}")
        self.img_size = int(img_size)
        self.blocks = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.blocks.append(conv_block(cin, c))
            cin = c
        self.to_structure = nn.Conv2d(chans[1], structure_channels, 1)
        self.to_texture = nn.Linear(chans[-1], texture_dim)

    @property
    def size_multiple(self) -> int:
        """Input sides must divide by this (one 2x pooling per block)."""
        return 2 ** len(self.blocks)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``size=None``: resize to ``img_size`` x ``img_size``; else to ``size`` (multiples of
        :attr:`size_multiple`), which keeps another pixel scale (z_s is then ``size / 4``)."""
        if size is None:
            h = resize_to(x, self.img_size)
        elif tuple(x.shape[-2:]) != tuple(size):
            h = F.interpolate(
                x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True
            )
        else:
            h = x
        z_s = None
        for i, block in enumerate(self.blocks):
            h = F.max_pool2d(block(h), 2)
            if i == 1:
                z_s = self.to_structure(h)
        z_t = self.to_texture(h.mean(dim=(2, 3)))
        return z_s, z_t


class AdaIN(nn.Module):
    """Instance normalisation whose per-channel scale and shift come from z_t."""

    def __init__(self, channels: int, texture_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(texture_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, h: Tensor, z_t: Tensor) -> Tensor:
        gamma, beta = self.affine(z_t)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + gamma) + beta


class ModBlock(nn.Module):
    """Residual block: (AdaIN, LeakyReLU, 3x3 conv) x 2, skip (1x1 conv if channels change)."""

    def __init__(self, cin: int, cout: int, texture_dim: int) -> None:
        super().__init__()
        self.mod1, self.conv1 = AdaIN(cin, texture_dim), nn.Conv2d(cin, cout, 3, padding=1)
        self.mod2, self.conv2 = AdaIN(cout, texture_dim), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, h: Tensor, z_t: Tensor) -> Tensor:
        y = self.conv1(F.leaky_relu(self.mod1(h, z_t), 0.2))
        y = self.conv2(F.leaky_relu(self.mod2(y, z_t), 0.2))
        return self.skip(h) + y


class SwapGenerator(nn.Module):
    """G(z_s, z_t): decodes z_s (1/4 resolution) to ``img_size``, z_t modulating each block.

    Symmetric to the encoder's first two blocks: a block at 1/4 resolution, then two
    (nearest x2 upsampling, block) stages; a 1x1 conv and a sigmoid give images in [0, 1].
    """

    def __init__(
        self,
        img_size: int = 256,
        enc_channels: Sequence[int] = (64, 64, 32, 32),
        structure_channels: int = 8,
        texture_dim: int = 256,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        c0, c1 = int(enc_channels[0]), int(enc_channels[1])
        self.img_size = int(img_size)
        self.stem = nn.Conv2d(structure_channels, c1, 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                ModBlock(c1, c1, texture_dim),
                ModBlock(c1, c0, texture_dim),
                ModBlock(c0, c0, texture_dim),
            ]
        )
        self.out = nn.Conv2d(c0, out_channels, 1)

    def forward(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        h = self.stem(z_s)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(h, z_t)
        return torch.sigmoid(self.out(F.leaky_relu(h, 0.2)))


class PatchDiscriminator(nn.Module):
    """PatchGAN image discriminator: 4x4 stride-2 convs, LeakyReLU; logits (N, 1, h, w)."""

    def __init__(self, in_channels: int = 1, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, c = in_channels, channels
        for _ in range(n_layers):
            layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            cin, c = c, min(2 * c, 8 * channels)
        layers += [
            nn.Conv2d(cin, cin, 3, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(cin, 1, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def random_crops(x: Tensor, size: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` random ``size`` x ``size`` crops per image: (N, n, C, size, size)."""
    b, c, h, w = x.shape
    ys = torch.randint(0, h - size + 1, (b, n), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (b, n), generator=generator).tolist()
    crops = [
        torch.stack(
            [x[i, :, y : y + size, z : z + size] for y, z in zip(ys[i], xs[i], strict=True)]
        )
        for i in range(b)
    ]
    return torch.stack(crops)


class CooccurrenceDiscriminator(nn.Module):
    """Patch co-occurrence discriminator (Park et al. 2020): is a patch from the same image as a
    set of reference patches? Patch encoder (strided convs, pooled), mean over the references,
    MLP on [patch, references] -> one logit per patch."""

    def __init__(self, in_channels: int = 1, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, c = in_channels, channels
        for _ in range(n_layers):
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            cin, c = c, min(2 * c, 8 * channels)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.encode = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(2 * cin, 2 * cin), nn.LeakyReLU(0.2, True), nn.Linear(2 * cin, 1)
        )

    def forward(self, patches: Tensor, refs: Tensor) -> Tensor:
        """``patches`` (N, P, C, s, s) and ``refs`` (N, R, C, s, s) -> logits (N, P)."""
        n, p = patches.shape[:2]
        f = self.encode(patches.flatten(0, 1)).view(n, p, -1)
        r = (
            self.encode(refs.flatten(0, 1))
            .view(n, refs.shape[1], -1)
            .mean(1, keepdim=True)
            .expand(-1, p, -1)
        )
        return self.head(torch.cat([f, r], dim=2)).squeeze(2)


__all__ = [
    "AdaIN",
    "CooccurrenceDiscriminator",
    "PatchDiscriminator",
    "StructureTextureEncoder",
    "SwapGenerator",
    "random_crops",
    "resize_to",
]
