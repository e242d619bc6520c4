"""Stage ``sr``: the super-resolution GAN (generator, discriminator, EMA, feature losses).

Losses (weights from ``cfg.loss``; a zero weight switches a term off entirely):
pixel L1 against HR, adversarial (``cfg.sr.gan_loss``), and the cosine feature losses
L_ViT, L_str, L_tex through frozen extractors, compared with HR (``target: hr``) or with
the LR input (``target: lr``, the paper). With ``adv: 0`` there is no discriminator step.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.data.degrade import upsample
from mrsr.errors import CheckpointError, ConfigError
from mrsr.losses.feature import FeatureLoss
from mrsr.losses.gan import check_gan_loss, d_loss_fake, d_loss_real, g_loss
from mrsr.metrics import SRMetrics
from mrsr.results import print_table, write_results
from mrsr.stages.base import StageModule

log = logging.getLogger("mrsr")

LOSS_KEYS = ("pixel", "adv", "vit", "str", "tex")
PIXEL_LOSSES = ("l1", "charbonnier")
LR_SCHEDULES = ("constant", "cosine")


def pixel_loss(sr: Tensor, hr: Tensor, kind: str = "l1", eps: float = 1e-3) -> Tensor:
    """Mean L1, or Charbonnier ``sqrt(d^2 + eps^2) - eps`` (smooth at 0, L1 elsewhere)."""
    if kind == "charbonnier":
        return (torch.sqrt((sr - hr).pow(2) + eps * eps) - eps).mean()
    return F.l1_loss(sr, hr)


def lr_factor(schedule: str, warmup: int, total: int):
    """Learning-rate multiplier per generator update: linear warm-up, then constant or cosine
    decay to zero at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return factor


def ema_warmup_fn(decay: float):
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so short runs are not dominated by the initial weights."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged) -> None:
        if not torch.is_floating_point(ema_params[0]):  # integer buffers (BN step counters)
            torch._foreach_copy_(ema_params, params)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


class SRModule(StageModule):
    """Manual-optimisation GAN: D step (real/fake losses), then G step with D frozen.

    ``vit_extractor`` maps images to (N, D) features, ``disent_extractor`` to ``(z_s, z_t)``;
    both are frozen, kept out of the optimisers and out of the checkpoints.
    """

    stage = "sr"

    def __init__(
        self,
        config: dict[str, Any],
        generator: nn.Module,
        discriminator: nn.Module | None,
        scale: int,
        loss: dict[str, Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_decay: float = 0.999,
        gan_loss: str = "nsgan",
        nan_policy: str = "skip",
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        channels_last: bool = False,
        vit_extractor: nn.Module | None = None,
        disent_extractor: nn.Module | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(config=config, scale=scale, nan_policy=nan_policy)
        self.automatic_optimization = False
        self.weights = {k: float(loss.get(k, 0.0)) for k in LOSS_KEYS}
        self.pixel_type = str(loss.get("pixel_type", "l1"))
        if self.pixel_type not in PIXEL_LOSSES:
            raise ConfigError(f"loss.pixel_type={self.pixel_type!r} is unknown: choose {' or '.join(PIXEL_LOSSES)}")
        self.target = str(loss.get("target", "hr"))
        if self.target not in ("hr", "lr"):
            raise ConfigError(f"loss.target={self.target!r} is unknown: choose hr or lr")
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ConfigError(f"loss weights {self.weights} must be >= 0 and not all zero")
        self.gan_loss = check_gan_loss(gan_loss)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"sr.lr_schedule={lr_schedule!r} is unknown: choose {' or '.join(LR_SCHEDULES)}")
        self.lr_schedule, self.warmup_steps = lr_schedule, int(warmup_steps)
        self.channels_last = bool(channels_last)
        self.info = dict(info or {})
        self.generator = generator
        self.use_d = self.weights["adv"] > 0
        self.discriminator = discriminator if self.use_d else None
        if self.use_d and discriminator is None:
            raise ConfigError("loss.adv > 0 needs a discriminator (sr.discriminator)")
        self.ema_decay = float(ema_decay)
        self.ema: AveragedModel | None = None
        if self.ema_decay > 0:
            self.ema = AveragedModel(generator, multi_avg_fn=ema_warmup_fn(self.ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
        self._features: dict[str, FeatureLoss] = {}  # not submodules: not saved, not optimised
        if self.weights["vit"] > 0:
            if vit_extractor is None:
                raise ConfigError("loss.vit > 0 needs a ViT feature extractor")
            self._features["vit"] = FeatureLoss(vit_extractor)
        if self.weights["str"] > 0 or self.weights["tex"] > 0:
            if disent_extractor is None:
                raise ConfigError("loss.str/loss.tex > 0 need a disentanglement encoder")
            self._features["disent"] = FeatureLoss(disent_extractor)
        self.val_sr, self.val_bicubic = SRMetrics(), SRMetrics()
        self.test_sr, self.test_bicubic = SRMetrics(), SRMetrics()
        self._grid: list[tuple[str, Tensor]] | None = None

    # -- plumbing
    def _apply(self, fn, *args, **kwargs):  # move the (unregistered) extractors along
        super()._apply(fn, *args, **kwargs)
        for f in self._features.values():
            f._apply(fn, *args, **kwargs)
        return self

    @property
    def eval_generator(self) -> nn.Module:
        """The network used for validation, test and prediction (the EMA copy when enabled)."""
        return self.ema.module if self.ema is not None else self.generator

    def forward(self, lr: Tensor) -> Tensor:
        return self.eval_generator(lr)

    def _memory_format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def on_fit_start(self) -> None:
        if self.channels_last:  # NHWC convolutions: ~1.3x faster on CPU, tensor-core friendly on GPU
            self.to(memory_format=torch.channels_last)

    def generator_updates(self) -> int:
        """Generator updates the run will make (one per batch, whatever the optimiser count)."""
        total = int(self.trainer.estimated_stepping_batches)
        if self.use_d and self.trainer.max_steps > 0:
            total //= 2  # Lightning counts the D and the G step under manual optimisation
        return max(total, 1)

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)
        opts = [opt_g]
        if self.use_d:
            opts.append(torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas))
        if self.lr_schedule == "constant" and self.warmup_steps <= 0:
            return opts if self.use_d else opt_g
        factor = lr_factor(self.lr_schedule, self.warmup_steps, self.generator_updates())
        return opts, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in opts]

    # -- training
    def generator_terms(self, lr: Tensor, hr: Tensor, sr: Tensor) -> dict[str, Tensor]:
        """The weighted-in loss terms of the G step (only those with a non-zero weight)."""
        w = self.weights
        terms: dict[str, Tensor] = {}
        if w["pixel"] > 0:
            terms["pixel"] = pixel_loss(sr, hr, self.pixel_type)
        if w["adv"] > 0:
            terms["adv"] = g_loss(self.discriminator(sr), self.gan_loss)
        ref = hr if self.target == "hr" else lr
        if "vit" in self._features:
            terms["vit"] = self._features["vit"](sr, ref)[0]
        if "disent" in self._features:
            d_str, d_tex = self._features["disent"](sr, ref)
            if w["str"] > 0:
                terms["str"] = d_str
            if w["tex"] > 0:
                terms["tex"] = d_tex
        return terms

    def training_step(self, batch, batch_idx: int) -> None:
        lr, hr, _ = batch
        lr, hr = self._memory_format(lr), self._memory_format(hr)
        opts = self.optimizers()
        opt_g, opt_d = (opts[0], opts[1]) if isinstance(opts, list | tuple) else (opts, None)
        sr = self.generator(lr)
        if self.use_d:
            self.discriminator.requires_grad_(True)
            d_terms = {
                "d_real": d_loss_real(self.discriminator(hr), self.gan_loss),
                "d_fake": d_loss_fake(self.discriminator(sr.detach()), self.gan_loss),
            }
            if self.losses_finite(d_terms):
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_terms["d_real"] + d_terms["d_fake"])
                self.step_optimizer(opt_d, [self.discriminator], "D")
            self.log_dict({f"train/{k}": v.detach() for k, v in d_terms.items()}, on_step=True)
            self.discriminator.requires_grad_(False)
        terms = self.generator_terms(lr, hr, sr)
        total = sum(self.weights[k] * v for k, v in terms.items())
        if not self.losses_finite({**terms, "total": total}):
            return
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(total)
        if self.step_optimizer(opt_g, [self.generator], "G") and self.ema is not None:
            self.ema.update_parameters(self.generator)
        scheds = self.lr_schedulers()  # None, one scheduler or a list (with a discriminator)
        for sched in scheds if isinstance(scheds, list) else filter(None, [scheds]):
            sched.step()  # once per batch, also a skipped one, so the schedule follows the batch count
        self.log("train/loss", total.detach(), on_step=True, prog_bar=True)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True)

    # -- evaluation
    def _eval_step(self, batch, sr_metric: SRMetrics, bic_metric: SRMetrics) -> tuple[Tensor, Tensor]:
        lr, hr, meta = batch
        sr = self.eval_generator(self._memory_format(lr)).clamp(min=0)
        bic = upsample(lr, int(self.scale))
        sr_metric.update(sr, hr, meta.volume_idx, meta.slice)
        bic_metric.update(bic, hr, meta.volume_idx, meta.slice)
        return sr, bic

    def validation_step(self, batch, batch_idx: int) -> None:
        sr, bic = self._eval_step(batch, self.val_sr, self.val_bicubic)
        if batch_idx == 0:
            lr, hr, _ = batch
            self._grid = [("LR", lr), ("bicubic", bic), ("SR", sr), ("HR", hr), ("|SR-HR|", (sr - hr).abs())]

    def _log_metrics(self, split: str, sr_metric: SRMetrics, bic_metric: SRMetrics) -> tuple[dict, dict]:
        ours, bic = sr_metric.compute(), bic_metric.compute()
        sr_metric.reset()
        bic_metric.reset()
        if not ours:
            return ours, bic
        logged = {f"{split}/{k}": ours[k] for k in ("psnr", "ssim", "nmse")}
        logged.update({f"{split}/{k}_bicubic": bic[k] for k in ("psnr", "ssim", "nmse")})
        logged[f"{split}/score"] = ours["psnr"]
        self.log_dict(logged, prog_bar=False)
        return ours, bic

    def on_validation_epoch_end(self) -> None:
        ours, _ = self._log_metrics("val", self.val_sr, self.val_bicubic)
        if self._grid is not None and not self.trainer.sanity_checking:
            self.log_grid("val/examples", self._grid)
        self._grid = None
        if ours:
            log.info("step %d: val PSNR %.2f dB", self.global_step, ours["psnr"])

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_sr, self.test_bicubic)

    def on_test_epoch_end(self) -> None:
        ours, bic = self._log_metrics("test", self.test_sr, self.test_bicubic)
        if not ours or not self.trainer.is_global_zero:
            return
        info = {k: self.info.get(k) for k in ("dataset", "scale", "degradation", "loss")}
        info["scale"] = self.scale
        rows = [{"method": "sr", **info, **ours}, {"method": "bicubic", **info, **bic}]
        title = f"{info['dataset']} x{self.scale} ({info['degradation']}, loss={info['loss']}), test split"
        print_table(rows, title)
        csv_path, _ = write_results(self.trainer.default_root_dir, rows)
        log.info("results written to %s", csv_path)


# -- construction from the config ------------------------------------------------------------

def _choice(group: str) -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except (ValueError, AttributeError):
        return None


def check_generator_cfg(model_cfg: Any, where: str) -> None:
    """Only trainable ``mrsr.nets`` networks may be built (also from checkpoint metadata)."""
    target = str(model_cfg.get("_target_", "")) if hasattr(model_cfg, "get") else ""
    if not target.startswith("mrsr.nets."):
        raise ConfigError(f"{where}: model target {target!r} is not an mrsr.nets network")


def build_generator(model_cfg: Any, where: str = "model") -> nn.Module:
    check_generator_cfg(model_cfg, where)
    net = instantiate(model_cfg, _convert_="all")
    if not getattr(net, "trainable", False):
        name = str(model_cfg["_target_"]).rsplit(".", 1)[-1]
        raise ConfigError(
            f"{where}={name} is not trainable: stage=sr needs model=srresnet|srresnet_small "
            "(evaluate interpolation baselines with stage=eval model=bicubic)"
        )
    return net


def load_extractors(
    cfg: DictConfig, need_vit: bool = True, need_disent: bool = True
) -> tuple[nn.Module | None, nn.Module | None]:
    """The frozen ViT and disentanglement extractors the loss preset needs."""
    loss, preset = cfg.loss, _choice("loss") or "this preset"
    vit = disent = None
    if need_vit and float(loss.vit) > 0:
        if not cfg.sr.get("vit_ckpt"):
            raise ConfigError(
                f"loss={preset} needs sr.vit_ckpt=<stage-vit checkpoint> "
                "(train one with stage=vit, or use loss=l1 / stage=pipeline)"
            )
        from mrsr.stages.vit import load_extractor

        vit = load_extractor(cfg.sr.vit_ckpt)
    if need_disent and (float(loss.str) > 0 or float(loss.tex) > 0):
        if not cfg.sr.get("disent_ckpt"):
            raise ConfigError(
                f"loss={preset} needs sr.disent_ckpt=<stage-disent checkpoint> "
                "(train one with stage=disent, or use loss=l1 / stage=pipeline)"
            )
        from mrsr.stages.disent import load_extractor as load_disent

        disent = load_disent(cfg.sr.disent_ckpt)
    return vit, disent


def build(
    cfg: DictConfig,
    dm: Any,
    vit_extractor: nn.Module | None = None,
    disent_extractor: nn.Module | None = None,
) -> SRModule:
    """The SR module from the composed config (extractors may be passed in directly)."""
    generator = build_generator(cfg.model)
    if vit_extractor is None or disent_extractor is None:
        vit, disent = load_extractors(
            cfg, need_vit=vit_extractor is None, need_disent=disent_extractor is None
        )
        vit_extractor, disent_extractor = vit_extractor or vit, disent_extractor or disent
    sr = cfg.sr
    disc = instantiate(sr.discriminator, _convert_="all") if float(cfg.loss.adv) > 0 else None
    config = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "sr": OmegaConf.to_container(sr, resolve=True),
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "scale": int(cfg.scale),
        "data": {  # what predict/eval need to feed the network as in training
            "degradation": getattr(getattr(dm, "store", None), "degradation", None),
            "percentile": getattr(getattr(dm, "store", None), "percentile", 99.5),
        },
    }
    info = {
        "dataset": getattr(dm, "dataset_name", None),
        "degradation": getattr(getattr(dm, "store", None), "degradation", None),
        "loss": _choice("loss"),
    }
    return SRModule(
        config=config,
        generator=generator,
        discriminator=disc,
        scale=int(cfg.scale),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        lr=float(sr.lr),
        betas=tuple(sr.betas),
        ema_decay=float(sr.ema_decay),
        gan_loss=str(sr.gan_loss),
        nan_policy=str(sr.nan_policy),
        lr_schedule=str(sr.get("lr_schedule", "constant")),
        warmup_steps=int(sr.get("warmup_steps", 0)),
        channels_last=bool(sr.get("channels_last", False)),
        vit_extractor=vit_extractor,
        disent_extractor=disent_extractor,
        info=info,
    )


def load_generator(path: str, scale: int | None = None) -> nn.Module:
    """The EMA generator (the raw one when EMA was off) of a stage-``sr`` checkpoint, eval mode.

    ``scale`` (if given) must match the checkpoint's; the network's ``scale`` attribute says it.
    """
    ckpt = load_checkpoint(path, stage="sr", scale=scale)
    model_cfg = (ckpt["mrsr"].get("config") or {}).get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(path, "no generator config in the checkpoint metadata")
    try:
        net = build_generator(model_cfg, where=f"{path}")
    except ConfigError as err:
        raise CheckpointError(path, str(err)) from err
    sd = ckpt["state_dict"]
    weights = sub_state_dict(sd, "ema.module") or sub_state_dict(sd, "generator")
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(path, f"generator weights do not match its config ({str(err).splitlines()[0]})") from err
    net.training_data = dict(ckpt["mrsr"]["config"].get("data") or {})  # degradation, percentile
    return net.eval()


def export_generator(path: str | Path, out: str | Path, **notes: Any) -> Path:
    """Write the evaluation generator of a stage-``sr`` checkpoint as a small checkpoint
    (weights and metadata only, no optimiser or discriminator) that :func:`load_generator`
    and ``stage=predict`` read like any other. ``notes`` are added to the metadata."""
    import io

    from mrsr.results import atomic_write_bytes

    ckpt = load_checkpoint(path, stage="sr")
    sd = ckpt["state_dict"]
    weights = sub_state_dict(sd, "ema.module") or sub_state_dict(sd, "generator")
    meta = {**ckpt["mrsr"], "exported_from": Path(path).name, **notes}
    buf = io.BytesIO()
    torch.save({"state_dict": {f"generator.{k}": v.detach().contiguous().clone() for k, v in weights.items()},
                "mrsr": meta}, buf)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
