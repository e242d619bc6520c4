"""The stage-``vit`` network: MONAI's ViT (the UNETR encoder) on 2D slices, plus pretrained loading.

Input rule: every image (N, 1, H, W) is resized to ``img_size`` x ``img_size`` with bilinear,
antialiased interpolation (the aspect ratio is not kept) before patch embedding, so slices and
patches of any size give features of the same shape.

Pretrained rule (:func:`load_pretrained_vit`): a MONAI UNETR state dict (keys ``vit.*``) or a
ViT state dict (optionally under ``"state_dict"``) is mapped onto the 2D encoder. A 3D conv patch
embedding ``(D, C, p, p, p)`` becomes ``(D, C, p, p)`` by averaging the kernel over depth (the
last axis, as MONAI orders ``H, W, D``); a 3D position embedding over a ``g x g x g`` token grid is
averaged over depth to ``g x g``; a 2D grid of another size is resized bicubically to the model's
grid. Any classification head in the file is dropped; every other tensor must match in shape.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import ViT
from monai.networks.utils import copy_model_state
from torch import Tensor, nn

from mrsr.errors import CheckpointError, ConfigError

log = logging.getLogger("mrsr")

FEATURES = ("mean", "cls")
_PATCH_W = "patch_embedding.patch_embeddings.weight"
_POS = "patch_embedding.position_embeddings"


class SliceViT(nn.Module):
    """2D ViT encoder with a zero-initialised linear head (the pretext classifier).

    ``features(x)`` is the mean of the last layer's (layer-normed) patch tokens, or the CLS token
    when ``feature="cls"`` (then the MONAI ViT is built with a CLS token and its own
    classification head is removed). ``forward(x)`` returns logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        num_classes: int = 2,
        feature: str = "mean",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ConfigError(f"vit.feature={feature!r}: expected one of {', '.join(FEATURES)}")
        if img_size % patch_size:
            raise ConfigError(
                f"vit.img_size={img_size} is not a multiple of vit.patch_size={patch_size}"
            )
        if hidden_size % num_heads:
            raise ConfigError(
                f"vit.hidden_size={hidden_size} is not a multiple of vit.num_heads={num_heads}"
            )
        self.img_size = int(img_size)
        self.feature = feature
        self.hidden_size = int(hidden_size)
        self.vit = ViT(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            classification=feature == "cls",
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )
        if hasattr(self.vit, "classification_head"):
            del self.vit.classification_head  # MONAI's forward then returns the normed tokens
        for block in self.vit.blocks:  # built by MONAI even without cross-attention; never used
            if hasattr(block, "norm_cross_attn"):
                block.norm_cross_attn.requires_grad_(False)
        self.head = nn.Linear(hidden_size, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def resize(self, x: Tensor) -> Tensor:
        """Resize (N, C, H, W) to the model's square input size (bilinear, antialiased)."""
        if tuple(x.shape[-2:]) == (self.img_size, self.img_size):
            return x
        return F.interpolate(
            x,
            size=(self.img_size, self.img_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )

    def features(self, x: Tensor) -> Tensor:
        """Feature vector (N, hidden_size): mean patch token or CLS token of the last layer."""
        tokens, _ = self.vit(self.resize(x))
        if self.feature == "cls":
            return tokens[:, 0]
        return tokens.mean(dim=1)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embedding.patch_embeddings.kernel_size[0])

    def encode(self, x: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(pooled (N, D), token map (N, D, gh, gw))`` of the last layer (layer-normed).

        ``size=None`` resizes to ``img_size`` (the training input, :meth:`features`); another
        ``(h, w)`` (multiples of the patch size) keeps that pixel scale and resizes the position
        embedding bicubically to the ``h/p x w/p`` token grid, as DINO's interpolated
        position encoding does.
        """
        p = self.patch_size
        if size is None or tuple(size) == (self.img_size, self.img_size):
            tokens, _ = self.vit(self.resize(x))
            gh = gw = self.img_size // p
        else:
            gh, gw = size[0] // p, size[1] // p
            if x.shape[-2:] != (gh * p, gw * p):
                x = F.interpolate(
                    x, size=(gh * p, gw * p), mode="bilinear", align_corners=False, antialias=True
                )
            emb = self.vit.patch_embedding
            h = emb.patch_embeddings(x).flatten(2).transpose(1, 2)
            g = self.img_size // p
            pos = emb.position_embeddings.reshape(1, g, g, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", align_corners=False)
            h = emb.dropout(h + pos.flatten(2).transpose(1, 2))
            if hasattr(self.vit, "cls_token"):
                h = torch.cat((self.vit.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
            for blk in self.vit.blocks:
                h = blk(h)
            tokens = self.vit.norm(h)
        patches = tokens[:, 1:] if self.feature == "cls" else tokens
        pooled = tokens[:, 0] if self.feature == "cls" else tokens.mean(dim=1)
        return pooled, patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class LoadReport:
    """What :func:`load_pretrained_vit` did: destination keys loaded, source keys skipped, and
    destination encoder keys left at their initial values."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise CheckpointError(path, "pretrained ViT file not found")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, expected a pretrained ViT/UNETR state dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, f"refused: not a plain state dict ({first})") from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, f"corrupt or truncated state dict ({first})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            path, "not a state dict of tensors (expected a MONAI UNETR or ViT state dict)"
        )
    return obj


def _encoder_prefix(sd: dict[str, Tensor], path: Path) -> str:
    """The key prefix of the ViT inside ``sd`` ('' for a ViT, 'vit.' for a UNETR, ...)."""
    prefixes = sorted({k[: -len(_PATCH_W)] for k in sd if k.endswith(_PATCH_W)}, key=len)
    if not prefixes:
        raise CheckpointError(path, f"no ViT patch embedding ('{_PATCH_W}') in the state dict")
    return prefixes[0]


def _grid(n: int, dims: int) -> int | None:
    g = round(n ** (1.0 / dims))
    for c in (g - 1, g, g + 1):
        if c > 0 and c**dims == n:
            return c
    return None


def _to_2d(src: dict[str, Tensor], dst: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Convert a (3D or other-sized 2D) patch and position embedding to the model's 2D shapes."""
    out = dict(src)
    w = out.get(_PATCH_W)
    if w is not None and w.ndim == 5:
        out[_PATCH_W] = w.mean(dim=-1)  # average the kernel over depth (MONAI: H, W, D order)
    pos, want = out.get(_POS), dst.get(_POS)
    if pos is None or want is None or pos.shape == want.shape:
        return out
    if pos.ndim != 3 or pos.shape[-1] != want.shape[-1]:
        return out  # hidden size differs: left to the shape check (reported as not loaded)
    n, d = pos.shape[1], pos.shape[2]
    g_out = _grid(want.shape[1], 2)
    if w is not None and w.ndim == 5:
        g = _grid(n, 3)
        if g is None:
            raise CheckpointError(
                path,
                f"3D position embedding of {n} tokens is not a cubic grid; cannot map it to 2D",
            )
        grid = pos.reshape(1, g, g, g, d).mean(dim=3)  # average over depth: (1, g, g, d)
    else:
        g = _grid(n, 2)
        if g is None:
            raise CheckpointError(path, f"2D position embedding of {n} tokens is not a square grid")
        grid = pos.reshape(1, g, g, d)
    if g_out is None:
        raise CheckpointError(
            path, f"model position embedding of {want.shape[1]} tokens is not a square grid"
        )
    if g != g_out:
        grid = F.interpolate(
            grid.permute(0, 3, 1, 2).float(),
            size=(g_out, g_out),
            mode="bicubic",
            align_corners=False,
        )
        grid = grid.permute(0, 2, 3, 1).to(pos.dtype)
        log.info(
            "%s: position embedding resized from a %dx%d to a %dx%d token grid",
            path,
            g,
            g,
            g_out,
            g_out,
        )
    out[_POS] = grid.reshape(1, g_out * g_out, d).contiguous()
    return out


def load_pretrained_vit(
    model: SliceViT, path: str | Path, allow_partial: bool = False
) -> LoadReport:
    """Load a MONAI UNETR/ViT state dict into ``model.vit`` (see the module docstring).

    Logs "loaded N tensors, skipped M: ..." and raises :class:`CheckpointError` when nothing
    matches, or when encoder tensors stay unloaded and ``allow_partial`` is false. The pretext
    head ``model.head`` is never loaded (it stays zero).
    """
    path = Path(path)
    raw = _read_state_dict(path)
    prefix = _encoder_prefix(raw, path)
    src = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    src = {k: v for k, v in src.items() if not k.startswith("classification_head.")}
    dst = model.vit.state_dict()
    width = src[_PATCH_W].shape[0]
    if width != dst[_PATCH_W].shape[0]:
        raise CheckpointError(
            path,
            f"ViT hidden size {width} in the file, "
            f"the model has {dst[_PATCH_W].shape[0]} (vit.hidden_size)",
        )
    src = _to_2d(src, dst, path)
    new, updated, unchanged = copy_model_state(dst, src, inplace=False)
    used = set(updated)
    report = LoadReport(
        loaded=list(updated),
        skipped=sorted(k for k in raw if not (k.startswith(prefix) and k[len(prefix) :] in used)),
        # MONAI >= 1.4 builds an unused cross-attention norm in every block; files saved by
        # older MONAI versions lack it, which is not a partial load.
        missing=[k for k in unchanged if "norm_cross_attn" not in k],
    )
    shown = ", ".join(report.skipped[:8]) + (", ..." if len(report.skipped) > 8 else "")
    log.info(
        "%s: loaded %d tensors, skipped %d: %s",
        path,
        len(report.loaded),
        len(report.skipped),
        shown or "none",
    )
    if not report.loaded:
        raise CheckpointError(
            path, "no tensor matches the ViT (wrong architecture or hidden size?)"
        )
    if report.missing and not allow_partial:
        miss = ", ".join(report.missing[:4]) + (", ..." if len(report.missing) > 4 else "")
        raise CheckpointError(
            path,
            f"partial load refused: {len(report.missing)} of {len(dst)} encoder tensors would stay "
            f"unloaded ({miss}); check the vit size settings or set vit.allow_partial=true",
        )
    model.vit.load_state_dict(new)
    return report


__all__ = ["SliceViT", "LoadReport", "load_pretrained_vit"]
