"""Feature losses through frozen extractors: 1 - cosine similarity of flattened features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch of ``1 - cos(flatten(a_i), flatten(b_i))``, in float32 also under
    bf16/fp16 autocast (feature distances of 1e-4 are below bf16's resolution)."""
    with torch.autocast(a.device.type, enabled=False):
        return (
            1 - F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1, eps=1e-8)
        ).mean()


def trained_scale_size(
    h: int, w: int, pixel_scale: float | None, multiple: int
) -> tuple[int, int] | None:
    """The size at which an extractor trained at ``pixel_scale`` (its ``img_size / train_crop``)
    sees an ``h x w`` image: each side scaled and rounded to a multiple of ``multiple`` (at
    least one). ``None`` when the scale is unknown (the extractor resizes to its ``img_size``)."""
    if pixel_scale is None:
        return None
    return tuple(max(multiple, round(n * pixel_scale / multiple) * multiple) for n in (h, w))  # type: ignore[return-value]


def freeze(module: nn.Module) -> nn.Module:
    """Parameters without gradients, eval mode; returns the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FrozenExtractor(nn.Module):
    """Base of the stages' feature extractors: once :meth:`freeze` is called no parameter
    requires grad and the module stays in eval mode (``train()`` is a no-op for it), while
    gradients still flow to its input. (:class:`FeatureLoss` does the same for any module.)"""

    def freeze(self) -> FrozenExtractor:
        freeze(self)
        return self

    def train(self, mode: bool = True) -> FrozenExtractor:
        return super().train(False)


class FeatureLoss(nn.Module):
    """Cosine feature distance through a frozen extractor.

    The extractor maps images (N, 1, H, W) to a tensor, or to a tuple of tensors (the
    disentanglement encoder's ``(z_s, z_t)``); ``forward`` returns one distance per output.
    Its parameters never get gradients and it stays in eval mode (``train()`` is a no-op
    for it), but gradients flow to the input image.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = freeze(extractor)

    def train(self, mode: bool = True) -> FeatureLoss:
        super().train(mode)
        self.extractor.eval()
        return self

    def features(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.extractor(x)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    def pairs(self, x: Tensor, ref: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Features of ``x`` (gets gradients) and of ``ref`` (detached)."""
        return self.features(x), tuple(f.detach() for f in self.features(ref.detach()))

    def forward(self, x: Tensor, ref: Tensor) -> tuple[Tensor, ...]:
        """Distances between features of ``x`` (gets gradients) and of ``ref`` (detached)."""
        fx, fr = self.pairs(x, ref)
        return tuple(cosine_distance(a, b) for a, b in zip(fx, fr, strict=True))
