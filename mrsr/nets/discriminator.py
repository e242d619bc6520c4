"""SRGAN-style discriminator (the SPEC leaves it open): strided convs, global pooling, linear."""

from __future__ import annotations

from torch import Tensor, nn


class SRGANDiscriminator(nn.Module):
    """``n_layers`` stages of (3x3 conv, stride 1) + (3x3 conv, stride 2), LeakyReLU(0.2),
    channels doubling per stage from ``base_channels``; then global average pooling and a
    two-layer MLP to one logit per image. Works on any patch size >= 1 pixel."""

    def __init__(self, in_channels: int = 1, base_channels: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 3, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        ch = base_channels
        for i in range(n_layers):
            out = base_channels * 2 ** min(i, 3)
            if i > 0:
                layers += [nn.Conv2d(ch, out, 3, padding=1), nn.LeakyReLU(0.2, True)]
            layers += [nn.Conv2d(out, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(ch, 2 * ch),
            nn.LeakyReLU(0.2, True),
            nn.Linear(2 * ch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (N,)."""
        return self.head(self.features(x)).squeeze(1)
