"""GAN losses on discriminator logits: non-saturating (nsgan), least-squares (lsgan), hinge."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("nsgan", "lsgan", "hinge")


def check_gan_loss(kind: str) -> str:
    if kind not in GAN_LOSSES:
        from mrsr.errors import ConfigError

        raise ConfigError(f"gan_loss={kind!r} is unknown: choose one of {', '.join(GAN_LOSSES)}")
    return kind


def d_loss_real(real_logits: Tensor, kind: str = "nsgan") -> Tensor:
    """Discriminator loss on real samples."""
    if kind == "nsgan":
        return F.softplus(-real_logits).mean()  # -log sigmoid(x)
    if kind == "lsgan":
        return (real_logits - 1).pow(2).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean()
    raise ValueError(kind)


def d_loss_fake(fake_logits: Tensor, kind: str = "nsgan") -> Tensor:
    """Discriminator loss on generated samples."""
    if kind == "nsgan":
        return F.softplus(fake_logits).mean()  # -log(1 - sigmoid(x))
    if kind == "lsgan":
        return fake_logits.pow(2).mean()
    if kind == "hinge":
        return F.relu(1 + fake_logits).mean()
    raise ValueError(kind)


def d_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "nsgan") -> Tensor:
    """Total discriminator loss (real + fake terms)."""
    return d_loss_real(real_logits, kind) + d_loss_fake(fake_logits, kind)


def g_loss(fake_logits: Tensor, kind: str = "nsgan") -> Tensor:
    """Generator adversarial loss (non-saturating -log D(G(x)) for nsgan)."""
    if kind == "nsgan":
        return F.softplus(-fake_logits).mean()
    if kind == "lsgan":
        return (fake_logits - 1).pow(2).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(kind)


def d_accuracy(real_logits: Tensor, fake_logits: Tensor, kind: str = "nsgan") -> Tensor:
    """The share of samples D classifies right, real and fake weighted equally: a logit above
    the midpoint of the two targets (0; 0.5 for lsgan, whose targets are 1 and 0) is "real"."""
    mid = 0.5 if kind == "lsgan" else 0.0
    return 0.5 * ((real_logits > mid).float().mean() + (fake_logits < mid).float().mean())
