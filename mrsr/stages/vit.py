"""Stage ``vit``: pretext classification of a slice's dataset/contrast, then a frozen extractor.

``build(cfg, dm)`` makes the LightningModule; :func:`load_extractor` turns its checkpoint into
the frozen feature function f(image) that stage ``sr`` uses for L_ViT = 1 - cos(f(a), f(b)).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.errors import CheckpointError, ConfigError
from mrsr.metrics import SliceTable
from mrsr.nets.vit import SliceViT, load_pretrained_vit
from mrsr.stages.base import SliceEvalHooks, StageModule

log = logging.getLogger("mrsr")

NET_KEYS = ("img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads", "dropout_rate", "feature")


class ViTModule(SliceEvalHooks, StageModule):
    """Fine-tunes :class:`SliceViT` to classify slices into ``classes`` (cross-entropy, AdamW)."""

    stage = "vit"

    def __init__(
        self,
        net: dict[str, Any],
        classes: list[str],
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        pretrained: str | None = None,
        allow_partial: bool = False,
        nan_policy: str = "skip",
    ) -> None:
        if len(classes) < 2:
            raise ConfigError(f"stage vit needs at least two classes in the data, got {classes}")
        config = {"net": dict(net), "classes": list(classes), "lr": lr, "weight_decay": weight_decay}
        super().__init__(config=config, nan_policy=nan_policy)
        self.classes = list(classes)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.net = SliceViT(**net, num_classes=len(classes))
        self.eval_table = SliceTable(("label", "correct"))
        if pretrained:
            load_pretrained_vit(self.net, pretrained, allow_partial=allow_partial)
        self._counts: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        _, hr, meta = batch
        labels = torch.as_tensor(meta.label, device=hr.device)
        logits = self.net(hr)
        loss = F.cross_entropy(logits.float(), labels)
        if not self.losses_finite({"ce": loss}):
            return None
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc, prog_bar=True)
        return loss

    # -- evaluation: per-class correct/total counts, reduced over devices at epoch end
    def _eval_start(self) -> None:
        self.eval_table.reset()

    def _eval_step(self, batch: Any) -> None:
        _, hr, meta = batch
        labels = torch.as_tensor(meta.label, device=hr.device)
        pred = self.net(hr).argmax(1)
        self.eval_table.update(meta.volume_idx, meta.slice, label=labels, correct=(pred == labels))

    def _eval_end(self, split: str) -> None:
        table = self.eval_table.compute()  # gathered over ranks, each slice once
        k = len(self.classes)
        labels = table["label"].long()
        total = torch.bincount(labels, minlength=k).float()
        correct = torch.bincount(labels, weights=table["correct"].float(), minlength=k).float()
        acc = correct.sum() / total.sum().clamp_min(1)
        metrics = {f"{split}/acc": acc, f"{split}/score": acc}
        for i, name in enumerate(self.classes):
            if total[i] > 0:
                metrics[f"{split}/acc_{name}"] = correct[i] / total[i]
        self.log_dict(metrics, prog_bar=split == "val")


def net_config(vit_cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The :class:`SliceViT` arguments from a ``vit`` config group."""
    return {k: vit_cfg[k] for k in NET_KEYS if k in vit_cfg}


def build(cfg: DictConfig, dm: Any) -> ViTModule:
    v = cfg.vit
    return ViTModule(
        net=net_config(v),
        classes=list(dm.classes),
        lr=float(v.lr),
        weight_decay=float(v.weight_decay),
        pretrained=v.get("pretrained"),
        allow_partial=bool(v.get("allow_partial", False)),
        nan_policy=str(v.get("nan_policy", "skip")),
    )


class ViTExtractor(nn.Module):
    """Frozen f(image) -> (N, D) features of a trained stage-``vit`` network.

    Parameters never require grad and the module stays in eval mode even when a parent calls
    ``train()``; gradients still flow through it to its input. Features are returned in float32
    (also under bf16 autocast) so cosine losses on them are computed at full precision.
    """

    def __init__(self, net: SliceViT, classes: list[str] | None = None) -> None:
        super().__init__()
        self.net = net
        self.classes = list(classes or [])
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ViTExtractor:
        return super().train(False)

    @property
    def dim(self) -> int:
        return self.net.hidden_size

    def forward(self, images: Tensor) -> Tensor:
        return self.net.features(images).float()


def load_extractor(path: str | Path) -> ViTExtractor:
    """Rebuild the network of a stage-``vit`` checkpoint and return it as a frozen extractor."""
    ckpt = load_checkpoint(path, stage="vit")
    meta = ckpt["mrsr"].get("config") or {}
    if not isinstance(meta.get("net"), dict) or not meta.get("classes"):
        raise CheckpointError(path, "stage-vit checkpoint without its network config")
    try:
        net = SliceViT(**meta["net"], num_classes=len(meta["classes"]))
        net.load_state_dict(sub_state_dict(ckpt["state_dict"], "net"))
    except (RuntimeError, TypeError, ConfigError) as err:
        raise CheckpointError(path, f"weights do not fit the stored ViT config ({str(err).splitlines()[0][:200]})") from err
    return ViTExtractor(net, meta["classes"])
