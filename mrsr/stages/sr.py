"""Stage ``sr``: the super-resolution GAN (generator, discriminator, EMA, feature losses).

The generator objective (pixel, adversarial and feature terms, their weights and what they are
compared with) is :class:`mrsr.losses.objective.SRObjective`, built from ``cfg.loss``. With
``adv: 0`` there is no discriminator.

Budgets count generator updates: G and D share one optimiser (two parameter groups) that
steps once per batch, so Lightning's ``global_step``, ``sr.max_steps`` and the learning-rate
schedule count generator updates whatever the preset. This is BasicSR's order: the G loss sees
D before its update and D sees the fake from G before its update.
``sr.init_from`` starts the generator (and its EMA) from another stage-``sr`` checkpoint's
evaluation generator, for the two-phase schedule (L1, then feature/adversarial fine-tuning).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.data.degrade import upsample
from mrsr.errors import CheckpointError, ConfigError
from mrsr.losses.gan import check_gan_loss, d_loss_fake, d_loss_real, g_loss
from mrsr.losses.objective import LOSS_KEYS, SRObjective, needed_extractors, pixel_loss
from mrsr.metrics import SUMMARY, SRMetrics
from mrsr.nets import n_params
from mrsr.results import device_label, print_table, write_results
from mrsr.stages.base import StageModule

log = logging.getLogger("mrsr")

LR_SCHEDULES = ("constant", "cosine")
__all__ = ["LOSS_KEYS", "SRModule", "build", "load_generator", "pixel_loss"]


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
    """Manual optimisation, one optimiser step per batch: D loss (real/fake) and G loss (D
    frozen) are back-propagated into their own parameter groups, then one step updates both.

    ``objective`` holds the loss terms and the frozen extractors (kept out of the optimiser and
    out of the checkpoints).
    """

    stage = "sr"

    def __init__(
        self,
        config: dict[str, Any],
        generator: nn.Module,
        discriminator: nn.Module | None,
        scale: int,
        objective: SRObjective,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_decay: float = 0.999,
        gan_loss: str = "nsgan",
        nan_policy: str = "skip",
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        channels_last: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(config=config, scale=scale, nan_policy=nan_policy)
        self.automatic_optimization = False
        self.objective = objective
        self.gan_loss = check_gan_loss(gan_loss)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"sr.lr_schedule={lr_schedule!r} is unknown: choose {' or '.join(LR_SCHEDULES)}")
        self.lr_schedule, self.warmup_steps = lr_schedule, int(warmup_steps)
        self.channels_last = bool(channels_last)
        self.info = dict(info or {})
        self.generator = generator
        self.use_d = objective.uses_discriminator
        self.discriminator = discriminator if self.use_d else None
        if self.use_d and discriminator is None:
            raise ConfigError("loss.adv > 0 needs a discriminator (sr.discriminator)")
        self.ema_decay = float(ema_decay)
        self.ema: AveragedModel | None = None
        if self.ema_decay > 0:
            self.ema = AveragedModel(generator, multi_avg_fn=ema_warmup_fn(self.ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
        self.val_sr, self.val_bicubic = SRMetrics(), SRMetrics()
        self.test_sr, self.test_bicubic = SRMetrics(), SRMetrics()
        self._grid: list[tuple[str, Tensor]] | None = None
        self.test_rows: list[dict[str, Any]] = []
        self._infer: list[tuple[float, int]] = []  # (seconds, slices) of each test batch's forward pass

    @property
    def weights(self) -> dict[str, float]:
        """The configured loss weights (``objective.weights``)."""
        return self.objective.weights

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
        """Generator updates the run will make (one optimiser step per batch)."""
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def configure_optimizers(self):
        groups = [{"params": list(self.generator.parameters()), "name": "G"}]
        if self.use_d:
            groups.append({"params": list(self.discriminator.parameters()), "name": "D"})
        opt = torch.optim.Adam(groups, lr=self.lr, betas=self.betas)
        if self.lr_schedule == "constant" and self.warmup_steps <= 0:
            return opt
        factor = lr_factor(self.lr_schedule, self.warmup_steps, self.generator_updates())
        return [opt], [torch.optim.lr_scheduler.LambdaLR(opt, factor)]

    # -- training
    def adversarial(self, sr: Tensor) -> Tensor:
        """The generator's adversarial loss on ``sr`` (D frozen by the caller)."""
        return g_loss(self.discriminator(sr), self.gan_loss)

    def generator_terms(self, lr: Tensor, hr: Tensor, sr: Tensor) -> dict[str, Tensor]:
        """The unweighted G-step loss terms with a non-zero weight."""
        return self.objective.terms(lr, hr, sr, self.adversarial if self.use_d else None)

    def _calibrate(self, sr: Tensor, hr: Tensor, terms: dict[str, Tensor]) -> None:
        if not self.objective.calibrate(sr, hr, terms):
            return
        self.objective.average_scales_over_ranks()
        self.log_dict({f"train/scale_{k}": self.objective.term_scale[LOSS_KEYS.index(k)]
                       for k in self.objective.normalise if k in terms}, on_step=True)

    def training_step(self, batch, batch_idx: int) -> None:
        lr, hr, _ = batch
        lr, hr = self._memory_format(lr), self._memory_format(hr)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        sr = self.generator(lr)
        logged: dict[str, Tensor] = {}
        if self.use_d:
            self.discriminator.requires_grad_(True)
            d_terms = {
                "d_real": d_loss_real(self.discriminator(hr), self.gan_loss),
                "d_fake": d_loss_fake(self.discriminator(sr.detach()), self.gan_loss),
            }
            logged.update(d_terms)
            if self.losses_finite(d_terms):
                self.manual_backward(d_terms["d_real"] + d_terms["d_fake"])
            self.discriminator.requires_grad_(False)
        terms = self.generator_terms(lr, hr, sr)
        logged.update(terms)
        modules = [self.generator] + ([self.discriminator] if self.use_d else [])
        if self.losses_finite(terms):
            self._calibrate(sr, hr, terms)  # once, on a finite step
            total = self.objective.total(terms)
            if self.losses_finite({"total": total}):
                self.manual_backward(total)
                if self.step_optimizer(opt, modules, "G+D" if self.use_d else "G") and self.ema is not None:
                    self.ema.update_parameters(self.generator)
                self.log("train/loss", total.detach(), on_step=True, prog_bar=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()  # once per batch, also a skipped one, so the schedule follows the batch count
        self.log_dict({f"train/{k}": v.detach() for k, v in logged.items()}, on_step=True)

    # -- evaluation
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _eval_step(self, batch, sr_metric: SRMetrics, bic_metric: SRMetrics, timed: bool = False) -> tuple[Tensor, Tensor]:
        lr, hr, meta = batch
        if timed:
            self._sync()
            start = time.perf_counter()
        sr = self.eval_generator(self._memory_format(lr)).clamp(min=0)
        if timed:
            self._sync()
            self._infer.append((time.perf_counter() - start, lr.shape[0]))
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
        logged = {f"{split}/{k}": ours[k] for k in SUMMARY if k in ours}
        logged.update({f"{split}/{k}_bicubic": bic[k] for k in SUMMARY if k in bic})
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

    def on_test_epoch_start(self) -> None:
        self._infer = []

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_sr, self.test_bicubic, timed=True)

    def inference_ms_per_slice(self) -> float | None:
        """Forward time of the evaluation generator per test slice (ms): the median over test
        batches of each batch's time per slice, on this process's device at the test batch size
        (the median is robust to warm-up and to autotuning of a new slice shape; the first batch
        is left out when there are others). Under DDP, rank 0's batches."""
        timed = self._infer[1:] if len(self._infer) > 1 else self._infer
        per_slice = [1000 * t / n for t, n in timed if n]
        return statistics.median(per_slice) if per_slice else None

    def on_test_epoch_end(self) -> None:
        ours, bic = self._log_metrics("test", self.test_sr, self.test_bicubic)
        if not ours or not self.trainer.is_global_zero:
            return
        info = {k: self.info.get(k) for k in ("dataset", "scale", "degradation", "loss", "model")}
        info["scale"] = self.scale
        cost = {"params": n_params(self.eval_generator), "ms_per_slice": self.inference_ms_per_slice(),
                "device": device_label(self.device), "precision": str(self.trainer.precision)}
        rows = [{"method": "sr", **info, **ours, **cost}, {"method": "bicubic", **info, **bic}]
        title = f"{info['dataset']} x{self.scale} ({info['degradation']}, loss={info['loss']}), test split"
        print_table(rows, title)
        csv_path, _ = write_results(self.trainer.default_root_dir, rows)
        self.test_rows = rows
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
            f"{where}={name} is not trainable: stage=sr needs a network (model=srresnet, edsr, swinir, ...) "
            "(evaluate interpolation baselines with stage=eval model=bicubic)"
        )
    return net


def load_extractors(
    cfg: DictConfig, need_vit: bool = True, need_disent: bool = True
) -> tuple[nn.Module | None, nn.Module | None]:
    """The frozen ViT and disentanglement extractors the loss preset needs."""
    needed, preset = needed_extractors(cfg.loss), _choice("loss") or "this preset"
    vit = disent = None
    if need_vit and "vit" in needed:
        if not cfg.sr.get("vit_ckpt"):
            raise ConfigError(
                f"loss={preset} needs sr.vit_ckpt=<stage-vit checkpoint> "
                "(train one with stage=vit, or use loss=l1 / stage=pipeline)"
            )
        from mrsr.stages.vit import load_extractor

        vit = load_extractor(cfg.sr.vit_ckpt)
    if need_disent and "disent" in needed:
        if not cfg.sr.get("disent_ckpt"):
            raise ConfigError(
                f"loss={preset} needs sr.disent_ckpt=<stage-disent checkpoint> "
                "(train one with stage=disent, or use loss=l1 / stage=pipeline)"
            )
        from mrsr.stages.disent import load_extractor as load_disent

        disent = load_disent(cfg.sr.disent_ckpt)
    return vit, disent


def init_generator(generator: nn.Module, path: str, scale: int) -> int:
    """Copy the evaluation generator of the stage-``sr`` checkpoint ``path`` into ``generator``
    (nothing else: no discriminator, optimiser, EMA state or step count). Returns the number
    of tensors loaded; a network of another layout is refused in one line."""
    source = load_generator(path, scale=scale)
    ours, theirs = generator.state_dict(), source.state_dict()
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        raise CheckpointError(path, "sr.init_from: its generator has another layout than model= (same model settings needed)")
    generator.load_state_dict(theirs)
    log.info("sr.init_from: loaded %d of %d generator tensors from %s", len(theirs), len(ours), path)
    return len(theirs)


def build(
    cfg: DictConfig,
    dm: Any,
    vit_extractor: nn.Module | None = None,
    disent_extractor: nn.Module | None = None,
    *,
    model: DictConfig | None = None,
    train: DictConfig | None = None,
    scale: int | None = None,
) -> SRModule:
    """The SR module from the composed config (extractors may be passed in directly).

    ``model``, ``train`` and ``scale`` default to ``cfg.model``, ``cfg.sr`` and ``cfg.scale``
    (stage ``throughplane`` passes its own same-size network and schedule).
    """
    model = cfg.model if model is None else model
    sr = cfg.sr if train is None else train
    scale = int(cfg.scale) if scale is None else int(scale)
    generator = build_generator(model)
    if sr.get("init_from"):
        init_generator(generator, str(sr.init_from), scale)
    if vit_extractor is None or disent_extractor is None:
        vit, disent = load_extractors(
            cfg, need_vit=vit_extractor is None, need_disent=disent_extractor is None
        )
        vit_extractor, disent_extractor = vit_extractor or vit, disent_extractor or disent
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    store = getattr(dm, "store", dm)
    degradation = getattr(store, "degradation", None) or cfg.data.get("degradation")
    objective = SRObjective(loss, scale, degradation, vit_extractor, disent_extractor)
    disc = instantiate(sr.discriminator, _convert_="all") if objective.uses_discriminator else None
    config = {
        "model": OmegaConf.to_container(model, resolve=True),
        "sr": OmegaConf.to_container(sr, resolve=True),
        "loss": loss,
        "scale": scale,
        "data": {  # what predict/eval need to feed the network as in training
            "degradation": degradation,
            "percentile": getattr(store, "percentile", 99.5),
        },
    }
    info = {"dataset": getattr(dm, "dataset_name", None), "degradation": degradation, "loss": _choice("loss"),
            "model": _choice("model")}
    return SRModule(
        config=config,
        generator=generator,
        discriminator=disc,
        scale=scale,
        objective=objective,
        lr=float(sr.lr),
        betas=tuple(sr.betas),
        ema_decay=float(sr.ema_decay),
        gan_loss=str(sr.gan_loss),
        nan_policy=str(sr.nan_policy),
        lr_schedule=str(sr.lr_schedule),
        warmup_steps=int(sr.warmup_steps),
        channels_last=bool(sr.channels_last),
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
