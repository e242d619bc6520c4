"""Stage ``sr``: the super-resolution GAN (generator, discriminator, EMA, feature losses).

The generator objective (the loss preset's terms, :mod:`mrsr.losses.terms`: pixel, adversarial
and feature terms, their weights and what they are compared with) is
:class:`mrsr.losses.objective.SRObjective`, built from ``cfg.loss``. Without an adversarial
term there is no discriminator.

Budgets count generator updates: G and D share one optimiser (two parameter groups) that
steps once per batch, so Lightning's ``global_step``, ``sr.max_steps`` and the learning-rate
schedule count generator updates whatever the preset. This is BasicSR's order: the G loss sees
D before its update and D sees the fake from G before its update. The D group has its own
learning rate and Adam betas when ``sr.d_lr`` / ``sr.d_betas`` are set (null: ``sr.lr`` /
``sr.betas``); the schedule multiplies both groups' rates by the same factor.
``sr.d_warmup`` D-only steps come first in a run that has a discriminator (an adversarial term):
D learns real HR against ``G(LR)`` of the frozen start generator, with the GAN loss and the
D parameter group of training, at its base rate ``sr.d_lr``, on batches of the training
loader (the first epoch's order). They are not generator updates: ``global_step``, the
schedule, ``sr.max_steps``, G (its buffers too) and its EMA do not move; a resumed run
(``ckpt_path``) does not repeat them (every checkpoint is written after them).
``sr.init_from`` starts the generator (and its EMA) from another stage-``sr`` checkpoint's
evaluation generator, for the two-phase schedule (L1, then feature/adversarial fine-tuning),
where the discriminator starts from scratch: the warm-up lets it catch up before it steers G.

Adversarial and feature weights relative to L1: the terms with ``relative: true`` are rescaled
once, at the first generator update, so that each one's gradient on the SR output has the norm
of the L1-vs-HR loss's gradient there; the configured weight (``loss.terms.adv.weight: 0.1``)
is then that term's gradient norm as a fraction of L1's (the scales are buffers, saved in
the checkpoint; :meth:`mrsr.losses.objective.SRObjective.calibrate`). After a D warm-up the
adversarial scale is measured against the warmed-up D.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mrsr.data.acquisition import as_degradation
from mrsr.errors import CheckpointError, ConfigError
from mrsr.generators import build_generator, load_trained
from mrsr.labels import label_of, name_of
from mrsr.losses.gan import check_gan_loss, d_accuracy, d_loss_fake, d_loss_real, g_loss
from mrsr.losses.objective import SRObjective, needed_extractors
from mrsr.metrics import SUMMARY, RealismMetrics, SRMetrics
from mrsr.nets import n_params
from mrsr.ops import upsample
from mrsr.report.results import device_label
from mrsr.stages.base import StageModule, plain

log = logging.getLogger("mrsr")

LR_SCHEDULES = ("constant", "cosine")


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
    The D warm-up (``d_warmup``) runs in :meth:`on_train_start`, before the training loop, so
    none of its steps is a training step to Lightning.

    ``objective`` holds the loss terms and the frozen extractors (kept out of the optimiser and
    out of the checkpoints).
    """

    stage = "sr"

    def __init__(
        self,
        generator: Mapping[str, Any],
        loss: Mapping[str, Any],
        scale: int,
        discriminator: Mapping[str, Any] | None = None,
        vit_extractor: Mapping[str, Any] | nn.Module | None = None,
        disent_extractor: Mapping[str, Any] | nn.Module | None = None,
        init_from: str | None = None,
        degradation: Mapping[str, Any] | str | None = "bicubic",
        percentile: float = 99.5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_decay: float = 0.999,
        gan_loss: str = "nsgan",
        nan_policy: str = "skip",
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        channels_last: bool = False,
        d_lr: float | None = None,
        d_betas: tuple[float, float] | None = None,
        d_warmup: int = 0,
        seed: int | None = None,
    ) -> None:
        """``generator``, ``discriminator`` and the extractors are configs (``_target_``) that
        are built here, in this order: generator (then ``init_from``), the extractors the loss
        uses (from their checkpoints), the discriminator when the loss has an adversarial term.
        Extractors may also be given as modules. ``d_lr`` / ``d_betas`` (None: ``lr`` /
        ``betas``) and ``d_warmup`` are the discriminator's (module docstring). ``seed`` is the
        run's seed, for its results rows only."""
        # a network's table order is not the network: checkpoints stay loadable by 0.7 and earlier
        generator_cfg = {k: v for k, v in plain(generator).items() if k != "order"}
        loss_cfg = plain(loss)
        if int(d_warmup) < 0:
            raise ConfigError(f"sr.d_warmup={d_warmup} must be >= 0 (discriminator-only steps)")
        d_lr = float(lr) if d_lr is None else float(d_lr)
        d_betas = betas if d_betas is None else d_betas
        schedule = {
            "lr": float(lr),
            "betas": [float(b) for b in betas],
            "ema_decay": float(ema_decay),
            "gan_loss": str(gan_loss),
            "nan_policy": str(nan_policy),
            "lr_schedule": str(lr_schedule),
            "warmup_steps": int(warmup_steps),
            "channels_last": bool(channels_last),
            "init_from": init_from,
            "discriminator": plain(discriminator),
            "d_lr": d_lr,
            "d_betas": [float(b) for b in d_betas],
            "d_warmup": int(d_warmup),
        }
        # how predict/eval feed the network, and the operator its LR was made with
        operator = as_degradation(plain(degradation) if degradation is not None else None)
        data = {
            "degradation": operator.name,
            "operator": operator.describe(),
            "nominal": operator.nominal,
            "percentile": float(percentile),
        }
        config = {
            "model": generator_cfg,
            "sr": schedule,
            "loss": loss_cfg,
            "scale": int(scale),
            "data": data,
        }
        super().__init__(config=config, scale=int(scale), nan_policy=nan_policy)
        self.save_hyperparameters(
            {
                **schedule,
                "generator": generator_cfg,
                "loss": loss_cfg,
                "scale": int(scale),
                **data,
                "extractors": {
                    k: _describe(v)
                    for k, v in (("vit", vit_extractor), ("disent", disent_extractor))
                },
            }
        )
        self.automatic_optimization = False
        self.seed = seed
        self.generator = build_generator(generator_cfg)
        # the generator it starts from
        self.started_from: dict[str, Any] = {"updates": 0, "loss": None}
        if init_from:
            self.started_from = init_generator(self.generator, str(init_from), int(scale))
        needed = needed_extractors(loss_cfg)
        vit = _extractor(vit_extractor, "vit", needed, name_of(loss_cfg))
        disent = _extractor(disent_extractor, "disent", needed, name_of(loss_cfg))
        self.objective = SRObjective(loss_cfg, int(scale), operator.nominal, vit, disent)
        self.gan_loss = check_gan_loss(gan_loss)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.d_lr, self.d_betas = d_lr, (float(d_betas[0]), float(d_betas[1]))
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"sr.lr_schedule={lr_schedule!r} is unknown: choose {' or '.join(LR_SCHEDULES)}"
            )
        self.lr_schedule, self.warmup_steps = lr_schedule, int(warmup_steps)
        self.channels_last = bool(channels_last)
        self.degradation = operator.name
        self.use_d = self.objective.uses_discriminator
        self.discriminator: nn.Module | None = None
        if self.use_d:
            if not discriminator:
                raise ConfigError(
                    "an adversarial loss term needs a discriminator (sr.discriminator)"
                )
            self.discriminator = instantiate(discriminator, _convert_="all")
        self.d_warmup = int(d_warmup) if self.use_d else 0
        if int(d_warmup) > 0 and not self.use_d:
            log.info(
                "sr.d_warmup=%d: no discriminator (no adversarial term), nothing to warm up",
                int(d_warmup),
            )
        self.ema_decay = float(ema_decay)
        self.ema: AveragedModel | None = None
        if self.ema_decay > 0:
            self.ema = AveragedModel(
                self.generator, multi_avg_fn=ema_warmup_fn(self.ema_decay), use_buffers=True
            )
            self.ema.requires_grad_(False)
        self.val_sr, self.val_bicubic = SRMetrics(), SRMetrics()
        self.test_sr, self.test_bicubic = SRMetrics(), SRMetrics()
        self.test_zerofill = SRMetrics()  # the scanner's interpolation: a baseline of the test rows
        # realism, structure and consistency of the test split (results rows only)
        self.test_realism = nn.ModuleDict(
            {k: RealismMetrics(int(scale), operator.nominal) for k in ("sr", "bicubic", "zerofill")}
        )
        self._grid: list[tuple[str, Tensor]] | None = None
        self._infer: list[
            tuple[float, int]
        ] = []  # (seconds, slices) of each test batch's forward pass

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
        if (
            self.channels_last
        ):  # NHWC convolutions: ~1.3x faster on CPU, tensor-core friendly on GPU
            self.to(memory_format=torch.channels_last)

    def generator_updates(self) -> int:
        """Generator updates the run will make (one optimiser step per batch)."""
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def configure_optimizers(self):
        groups = [{"params": list(self.generator.parameters()), "name": "G"}]
        if self.use_d:
            groups.append(
                {
                    "params": list(self.discriminator.parameters()),
                    "name": "D",
                    "lr": self.d_lr,
                    "betas": self.d_betas,
                }
            )
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
        scales = self.objective.scales()
        self.log_dict(
            {f"train/scale_{k}": scales[k] for k in self.objective.relative if k in terms},
            on_step=True,
        )

    def discriminator_pass(self, hr: Tensor, sr: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """D's loss terms on real ``hr`` and fake ``sr`` (detached), back-propagated into D's
        parameters when finite (D is left frozen), and its accuracy on the batch."""
        self.discriminator.requires_grad_(True)
        real, fake = self.discriminator(hr), self.discriminator(sr.detach())
        terms = {
            "d_real": d_loss_real(real, self.gan_loss),
            "d_fake": d_loss_fake(fake, self.gan_loss),
        }
        if self.losses_finite(terms):
            self.manual_backward(terms["d_real"] + terms["d_fake"])
        self.discriminator.requires_grad_(False)
        return terms, d_accuracy(real.detach(), fake.detach(), self.gan_loss)

    def on_train_start(self) -> None:
        steps = self.d_warmup_due()
        if steps:
            self.warm_up_discriminator(steps)

    def d_warmup_due(self) -> int:
        """Discriminator warm-up steps this run makes: ``d_warmup`` before its first generator
        update, none when it resumes (its checkpoints were all written after the warm-up)."""
        resumed = self.trainer.ckpt_path is not None or self.global_step > 0
        return 0 if resumed else self.d_warmup

    def warm_up_discriminator(self, steps: int) -> list[float]:
        """``steps`` D-only steps on training batches against the frozen start generator (see
        the module docstring); returns D's accuracy on each batch, before its step."""
        trainer, opt = self.trainer, self.optimizers()
        group = next(g for g in opt.param_groups if g["name"] == "D")
        scheduled, group["lr"] = group["lr"], self.d_lr  # the schedule counts generator updates
        buffers = [b.detach().clone() for b in self.generator.buffers()]  # BatchNorm statistics
        accuracy: list[float] = []
        try:
            for batch in islice(_repeat(trainer.train_dataloader), steps):
                lr, hr, _ = trainer.strategy.batch_to_device(batch)
                lr, hr = self._memory_format(lr), self._memory_format(hr)
                opt.zero_grad(set_to_none=True)
                with trainer.precision_plugin.train_step_context():
                    with torch.no_grad():
                        sr = self.generator(lr)
                    _, acc = self.discriminator_pass(hr, sr)
                # Lightning counts an optimiser step (global_step) only inside training_step
                if any(
                    p.grad is not None for p in self.discriminator.parameters()
                ):  # a finite D loss
                    self.step_optimizer(opt, [self.discriminator], "D warm-up")
                accuracy.append(float(acc))
        finally:
            group["lr"] = scheduled
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(self.generator.buffers(), buffers, strict=True):
                    b.copy_(saved)
        n = min(10, len(accuracy))
        if n:
            log.info(
                "D warm-up: %d steps at lr %.3g, D accuracy %.3f on the first %d batches, "
                "%.3f on the last %d",
                len(accuracy),
                self.d_lr,
                statistics.fmean(accuracy[:n]),
                n,
                statistics.fmean(accuracy[-n:]),
                n,
            )
        return accuracy

    def training_step(self, batch, batch_idx: int) -> None:
        lr, hr, _ = batch
        lr, hr = self._memory_format(lr), self._memory_format(hr)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        sr = self.generator(lr)
        logged: dict[str, Tensor] = {}
        if self.use_d:
            d_terms, d_acc = self.discriminator_pass(hr, sr)
            logged.update(d_terms, d_acc=d_acc)
        terms = self.generator_terms(lr, hr, sr)
        logged.update(terms)
        modules = [self.generator] + ([self.discriminator] if self.use_d else [])
        if self.losses_finite(terms):
            self._calibrate(sr, hr, terms)  # once, on a finite step
            total = self.objective.total(terms)
            if self.losses_finite({"total": total}):
                self.manual_backward(total)
                if (
                    self.step_optimizer(opt, modules, "G+D" if self.use_d else "G")
                    and self.ema is not None
                ):
                    self.ema.update_parameters(self.generator)
                self.log("train/loss", total.detach(), on_step=True, prog_bar=True)
        sched = self.lr_schedulers()
        if sched is not None:
            # once per batch, also a skipped one, so the schedule follows the batch count
            sched.step()
        self.log_dict({f"train/{k}": v.detach() for k, v in logged.items()}, on_step=True)

    # -- evaluation
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _eval_step(
        self, batch, sr_metric: SRMetrics, bic_metric: SRMetrics, timed: bool = False
    ) -> tuple[Tensor, Tensor]:
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
            self._grid = [
                ("LR", lr),
                ("bicubic", bic),
                ("SR", sr),
                ("HR", hr),
                ("|SR-HR|", (sr - hr).abs()),
            ]

    def _log_metrics(
        self, split: str, sr_metric: SRMetrics, bic_metric: SRMetrics
    ) -> tuple[dict, dict]:
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
        sr, bic = self._eval_step(batch, self.test_sr, self.test_bicubic, timed=True)
        lr, hr, meta = batch
        zerofill = upsample(lr, int(self.scale), "zerofill")
        self.test_zerofill.update(zerofill, hr, meta.volume_idx, meta.slice)
        for name, pred in (("sr", sr), ("bicubic", bic), ("zerofill", zerofill)):
            self.test_realism[name].update(pred, hr, lr, meta.volume_idx, meta.slice)

    def inference_ms_per_slice(self) -> float | None:
        """Forward time of the evaluation generator per test slice (ms): the median over test
        batches of each batch's time per slice, on this process's device at the test batch size
        (the median is robust to warm-up and to autotuning of a new slice shape; the first batch
        is left out when there are others). Under DDP, rank 0's batches."""
        timed = self._infer[1:] if len(self._infer) > 1 else self._infer
        per_slice = [1000 * t / n for t, n in timed if n]
        return statistics.median(per_slice) if per_slice else None

    def run_info(self) -> dict[str, Any]:
        """What the results rows say about the run: dataset, scale, degradation, presets."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        loss, model = self.hparams["loss"], self.hparams["generator"]
        return {
            "dataset": getattr(dm, "dataset_name", None),
            "scale": self.scale,
            "degradation": self.degradation,
            "loss": name_of(loss),
            "model": name_of(model),
            "loss_label": label_of(loss),
            "model_label": label_of(model),
            "seed": self.seed,
            "updates": int(self.global_step),
            "start_updates": self.started_from["updates"],
            "start_loss": self.started_from["loss"],
        }

    def results_title(self) -> str:
        info = self.run_info()
        return (
            f"{info['dataset']} x{self.scale} ({info['degradation']}, loss={info['loss']}), "
            "test split"
        )

    def on_test_epoch_end(self) -> None:
        ours, bic = self._log_metrics("test", self.test_sr, self.test_bicubic)
        zerofill = self.test_zerofill.compute()
        self.test_zerofill.reset()
        # on every rank: it gathers
        realism = {name: metric.row() for name, metric in self.test_realism.items()}
        if not ours or not self.trainer.is_global_zero:
            return
        info = self.run_info()
        cost = {
            "params": n_params(self.eval_generator),
            "ms_per_slice": self.inference_ms_per_slice(),
            "device": device_label(self.device),
            "precision": str(self.trainer.precision),
        }
        self.test_rows = [
            {"method": "sr", **info, **ours, **realism["sr"], **cost},
            {"method": "bicubic", **info, **bic, **realism["bicubic"]},
            {"method": "zerofill", **info, **zerofill, **realism["zerofill"]},
        ]


def _repeat(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch (nothing when it is empty)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


# -- construction from the config ------------------------------------------------------------


def _describe(extractor: Any) -> Any:
    """An extractor argument as a hyperparameter: its config, or the class of a given module."""
    return type(extractor).__name__ if isinstance(extractor, nn.Module) else plain(extractor)


def _extractor(
    given: Mapping[str, Any] | nn.Module | None,
    name: str,
    needed: list[str],
    preset: str | None = None,
) -> nn.Module | None:
    """The frozen extractor ``name`` when the loss uses it: a given module, or its config's
    loader called with the checkpoint path (``sr.<name>_ckpt``); None when it is not used."""
    if name not in needed:
        return None
    if isinstance(given, nn.Module):
        return given
    if not given or not given.get("path"):
        raise ConfigError(
            f"loss={preset or 'this preset'} needs sr.{name}_ckpt=<stage-{name} checkpoint> "
            f"(train one with stage={name}, or use loss=l1 / stage=pipeline)"
        )
    return instantiate(given, _convert_="all")


def init_generator(generator: nn.Module, path: str, scale: int) -> dict[str, Any]:
    """Copy the evaluation generator of the stage-``sr`` checkpoint ``path`` into ``generator``
    (nothing else: no discriminator, optimiser, EMA state or step count). Returns what the start
    was trained with (``updates``, ``loss`` name); a network of another layout is refused."""
    source = load_trained(path, scale=scale)
    ours, theirs = generator.state_dict(), source.net.state_dict()
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        raise CheckpointError(
            path,
            "sr.init_from: its generator has another layout than model= "
            "(same model settings needed)",
        )
    generator.load_state_dict(theirs)
    log.info(
        "sr.init_from: loaded %d of %d generator tensors from %s", len(theirs), len(ours), path
    )
    return {"updates": source.updates, "loss": source.loss}
