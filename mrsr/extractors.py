"""Frozen feature extractors for the SR loss, rebuilt from stage checkpoints.

:func:`load_vit_extractor` turns a stage-``vit`` checkpoint into :class:`ViTExtractor` (the
frozen feature function f(image) of L_ViT); :func:`load_disent_extractor` turns a
stage-``disent`` checkpoint into :class:`DisentExtractor` (the frozen encoder of
L_str = 1 - cos(z_s(a), z_s(b)) and L_tex = 1 - cos(z_t(a), z_t(b))). Stage ``sr`` builds them
from ``stage.module.vit_extractor`` / ``disent_extractor`` (``conf/stage/sr.yaml``) when its loss
preset uses them. The networks are rebuilt from the checkpoint's stored network config
(:mod:`mrsr.nets`); the stage modules are not needed.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.errors import CheckpointError, ConfigError
from mrsr.losses.feature import FrozenExtractor, trained_scale_size
from mrsr.nets.swapae import StructureTextureEncoder
from mrsr.nets.vit import SliceViT


class ViTExtractor(FrozenExtractor):
    """Frozen f(image) -> ``(pooled (N, D), token map (N, D, gh, gw))`` of a trained
    stage-``vit`` network.

    Images are fed at the pixel scale the ViT was trained at (``pixel_scale`` = its
    ``img_size / train_crop``): an SR patch of H x W pixels is resized to
    ``round(H * pixel_scale / p) * p`` (at least one patch) and the position embedding follows
    the token grid. Without a known scale (older checkpoints) every image is resized to
    ``img_size``. Parameters never require grad and the module stays in eval mode even when a
    parent calls ``train()``; gradients still flow through it to its input. Features are
    returned in float32 (also under bf16 autocast) so distances are computed at full precision.
    """

    # what forward returns (named in measurements)
    output_names: tuple[str, ...] = ("pooled", "tokens")

    def __init__(
        self, net: SliceViT, classes: list[str] | None = None, pixel_scale: float | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.classes = list(classes or [])
        self.pixel_scale = pixel_scale
        self.freeze()

    @property
    def dim(self) -> int:
        return self.net.hidden_size

    def input_size(self, h: int, w: int) -> tuple[int, int] | None:
        """The size an ``h x w`` image is fed at (None: ``img_size``)."""
        return trained_scale_size(h, w, self.pixel_scale, self.net.patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pooled, tokens = self.net.encode(images, self.input_size(*images.shape[-2:]))
        return pooled.float(), tokens.float()


def load_vit_extractor(path: str | Path, random_init: bool = False) -> ViTExtractor:
    """Rebuild the network of a stage-``vit`` checkpoint and return it as a frozen extractor
    (``random_init``: the same network and pixel scale with fresh weights from the global RNG,
    the reference of an untrained extractor)."""
    ckpt = load_checkpoint(path, stage="vit")
    meta = ckpt["mrsr"].get("config") or {}
    if not isinstance(meta.get("net"), dict) or not meta.get("classes"):
        raise CheckpointError(path, "stage-vit checkpoint without its network config")
    try:
        net = SliceViT(**meta["net"], num_classes=len(meta["classes"]))
        if not random_init:
            net.load_state_dict(sub_state_dict(ckpt["state_dict"], "net"))
    except (RuntimeError, TypeError, ConfigError) as err:
        raise CheckpointError(
            path, f"weights do not fit the stored ViT config ({str(err).splitlines()[0][:200]})"
        ) from err
    crop = meta.get("train_crop")
    return ViTExtractor(net, meta["classes"], pixel_scale=net.img_size / crop if crop else None)


class DisentExtractor(FrozenExtractor):
    """Frozen E(images) -> (z_s, z_t) of a trained stage-``disent`` encoder.

    Images are fed at the pixel scale the encoder was trained at (``pixel_scale`` = its
    ``img_size / train_crop``; an H x W patch becomes ``round(H * pixel_scale)`` rounded to the
    encoder's size multiple); older checkpoints without a stored ``train_crop`` resize every
    image to ``img_size``. Parameters never require
    grad and the module stays in eval mode even when a parent calls ``train()``; gradients
    still flow to the input. Codes are returned in float32.
    """

    output_names: tuple[str, ...] = ("z_s", "z_t")  # what forward returns (named in measurements)

    def __init__(self, encoder: StructureTextureEncoder, pixel_scale: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pixel_scale = pixel_scale
        self.freeze()

    def input_size(self, h: int, w: int) -> tuple[int, int] | None:
        """The size an ``h x w`` image is fed at (None: ``img_size``)."""
        return trained_scale_size(h, w, self.pixel_scale, self.encoder.size_multiple)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        z_s, z_t = self.encoder(images, self.input_size(*images.shape[-2:]))
        return z_s.float(), z_t.float()


def load_disent_extractor(path: str | Path, random_init: bool = False) -> DisentExtractor:
    """Rebuild the encoder of a stage-``disent`` checkpoint and return it as a frozen extractor
    (``random_init``: the same encoder and pixel scale with fresh weights from the global RNG)."""
    ckpt = load_checkpoint(path, stage="disent")
    meta = ckpt["mrsr"].get("config") or {}
    if not isinstance(meta.get("net"), dict):
        raise CheckpointError(path, "stage-disent checkpoint without its network config")
    try:
        encoder = StructureTextureEncoder(**meta["net"])
        if not random_init:
            encoder.load_state_dict(sub_state_dict(ckpt["state_dict"], "encoder"))
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(
            path, f"weights do not fit the stored encoder config ({str(err).splitlines()[0][:200]})"
        ) from err
    crop = meta.get("train_crop")
    return DisentExtractor(encoder, pixel_scale=encoder.img_size / crop if crop else None)
