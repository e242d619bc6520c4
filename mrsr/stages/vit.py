"""Stage ``vit``: pretext classification of a slice's dataset/contrast, then a frozen extractor.

Optionally (``vit.mim_weight > 0``) a second pretext beside it: masked-image reconstruction
(SimMIM-style: a random ``mask_ratio`` of the patches is zero-filled and a linear head predicts
their pixels from the last-layer tokens, L1 on the masked pixels), which needs fine detail in
the tokens where classification does not.

:class:`ViTModule` is the LightningModule (``conf/stage/vit.yaml``);
:func:`mrsr.extractors.load_vit_extractor` turns its checkpoint into the frozen feature function
f(image) that stage ``sr`` uses for L_ViT.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.errors import ConfigError
from mrsr.metrics import SliceTable
from mrsr.nets.vit import SliceViT, load_pretrained_vit
from mrsr.stages.base import SliceEvalHooks, StageModule, plain

log = logging.getLogger("mrsr")


class ViTModule(SliceEvalHooks, StageModule):
    """Fine-tunes :class:`SliceViT` to classify slices into ``classes`` (cross-entropy, AdamW)."""

    stage = "vit"

    def __init__(
        self,
        net: Mapping[str, Any],
        classes: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        pretrained: str | None = None,
        allow_partial: bool = False,
        nan_policy: str = "skip",
        train_crop: int | None = None,
        mim_weight: float = 0.0,
        mask_ratio: float = 0.5,
    ) -> None:
        """``classes`` None: the data module's classes, read when training starts (``setup``)."""
        if mim_weight < 0 or not 0 < mask_ratio < 1:
            raise ConfigError(
                f"vit.mim_weight={mim_weight} must be >= 0 and "
                f"vit.mask_ratio={mask_ratio} in (0, 1)"
            )
        net = plain(net)
        config = {
            "net": dict(net),
            "classes": None,
            "lr": lr,
            "weight_decay": weight_decay,
            "train_crop": train_crop,
            "mim_weight": mim_weight,
            "mask_ratio": mask_ratio,
        }
        super().__init__(config=config, nan_policy=nan_policy)
        self.save_hyperparameters(
            {
                **config,
                "pretrained": pretrained,
                "allow_partial": allow_partial,
                "nan_policy": nan_policy,
            }
        )
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.mim_weight, self.mask_ratio = float(mim_weight), float(mask_ratio)
        self._pretrained, self._allow_partial = pretrained, bool(allow_partial)
        self.eval_table = SliceTable(("label", "correct"))
        self._counts: dict[str, Tensor] = {}
        self.classes: list[str] = []
        if classes is not None:
            self.build_net(list(classes))

    def build_net(self, classes: list[str]) -> None:
        """The network and (with ``mim_weight > 0``) its reconstruction head, for ``classes``."""
        if len(classes) < 2:
            raise ConfigError(f"stage vit needs at least two classes in the data, got {classes}")
        self.classes = list(classes)
        self.config["classes"] = list(classes)
        self.hparams["classes"] = list(classes)
        self._hparams_initial["classes"] = list(classes)  # what the loggers record
        self.net = SliceViT(**self.config["net"], num_classes=len(classes))
        p = self.net.patch_size
        self.mim_head = nn.Linear(self.net.hidden_size, p * p) if self.mim_weight > 0 else None
        if self._pretrained:
            load_pretrained_vit(self.net, self._pretrained, allow_partial=self._allow_partial)

    def setup(self, stage: str) -> None:
        if not self.classes:
            dm = self.trainer.datamodule
            self.build_net(list(getattr(dm, "classes", None) or []))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def masked_reconstruction(self, images: Tensor) -> Tensor:
        """L1 error of the pixels of randomly masked patches predicted from the tokens."""
        x = self.net.resize(images)
        p, g = self.net.patch_size, self.net.img_size // self.net.patch_size
        mask = torch.rand(x.shape[0], 1, g, g, device=x.device) < self.mask_ratio
        mask = mask.repeat_interleave(p, 2).repeat_interleave(p, 3)
        _, tokens = self.net.encode(x.masked_fill(mask, 0.0))  # (N, D, g, g)
        pred = self.mim_head(tokens.flatten(2).transpose(1, 2))  # (N, g*g, p*p)
        pred = F.pixel_shuffle(pred.transpose(1, 2).reshape(x.shape[0], p * p, g, g), p)
        return ((pred.float() - x.float()).abs() * mask).sum() / mask.sum().clamp_min(1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        _, hr, meta = batch
        labels = torch.as_tensor(meta.label, device=hr.device)
        logits = self.net(hr)
        terms = {"ce": F.cross_entropy(logits.float(), labels)}
        if self.mim_head is not None:
            terms["mim"] = self.masked_reconstruction(hr)
        loss = terms["ce"] + self.mim_weight * terms.get("mim", 0.0)
        if not self.losses_finite(terms):
            return None
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc, prog_bar=True)
        if "mim" in terms:
            self.log("train/mim", terms["mim"].detach())
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
