"""What every stage's LightningModule shares: checkpoint metadata, NaN policy, image grids."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

import mrsr
from mrsr.errors import NumericalError
from mrsr.viz import save_grid

log = logging.getLogger("mrsr")
MIN_LOSS_SCALE = 1.0  # fp16 loss scale below which non-finite gradients count as a fault


def plain(value: Any) -> Any:
    """A config value as plain Python containers (what checkpoints and hyperparameters hold)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class StageModule(L.LightningModule):
    """Base for the ``vit``, ``disent`` and ``sr`` modules.

    Subclasses set ``stage`` and pass their (plain-container) config to ``__init__``; it is
    stored in every checkpoint under ``checkpoint["mrsr"]`` with the scale and package
    version, which :func:`mrsr.checkpoint.load_checkpoint` checks. A module's test results
    (one dict per row, rank zero) are left in ``test_rows`` for the task to write.
    """

    stage = "base"

    def __init__(
        self, config: dict[str, Any], scale: int | None = None, nan_policy: str = "skip"
    ) -> None:
        super().__init__()
        if nan_policy not in ("skip", "stop"):
            raise ValueError("nan_policy must be 'skip' or 'stop'")
        self.config = config
        self.scale = scale
        self.nan_policy = nan_policy
        self.skipped_steps = 0
        self.overflow_steps = 0  # 16-mixed steps the loss scaler skipped (not faults)
        self.test_rows: list[dict[str, Any]] = []

    def results_title(self) -> str:
        """Title of the printed results table."""
        return f"stage {self.stage}, test split"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mrsr"] = {
            "stage": self.stage,
            "scale": self.scale,
            "version": mrsr.__version__,
            "config": self.config,
            "skipped_steps": self.skipped_steps,
            "overflow_steps": self.overflow_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("mrsr", {}).get("skipped_steps", 0))
        self.overflow_steps = int(checkpoint.get("mrsr", {}).get("overflow_steps", 0))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Validate at the last step always: at ``max_steps`` the run asks to stop, and
        Lightning validates before a requested stop when the step is not a validation step
        anyway (so the last weights are scored and can be the kept checkpoint)."""
        trainer = self.trainer
        if 0 < trainer.max_steps <= self.global_step:
            trainer.should_stop = True

    def losses_finite(self, terms: dict[str, Tensor]) -> bool:
        """Apply the NaN policy to a step's loss terms; False means: skip this step."""
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        if not bad:
            return True
        msg = (
            f"stage {self.stage}, step {self.global_step}: non-finite loss term(s) {', '.join(bad)}"
        )
        if self.nan_policy == "stop":
            raise NumericalError(msg + " (nan_policy=stop; the last good checkpoint is kept)")
        self.skipped_steps += 1
        log.warning(
            "%s: step skipped (nan_policy=skip, %d skipped so far)", msg, self.skipped_steps
        )
        return False

    def grads_finite(self, module: torch.nn.Module, name: str) -> bool:
        """Apply the NaN policy to gradients of ``module`` (call before ``optimizer.step``)."""
        ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())
        return ok or self.losses_finite({f"grad({name})": torch.tensor(math.nan)})

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler of ``16-mixed`` precision (``None`` for 32-bit and bf16)."""
        plugin = getattr(self._trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def step_optimizer(self, opt: Any, modules: list[torch.nn.Module], name: str) -> bool:
        """``opt.step()`` after a ``manual_backward``; True when the parameters were updated.

        Under ``16-mixed`` the loss scaler owns overflow, as its contract says: the step
        unscales the gradients, skips itself when they are not finite and lowers the scale
        (counted in ``overflow_steps``, not a fault). Only a scale driven below
        :data:`MIN_LOSS_SCALE` (gradients that stay non-finite) goes to the NaN policy.
        Without a scaler, non-finite gradients go to the NaN policy before any step.
        """
        scaler = self.grad_scaler()
        if scaler is None:
            if not all(self.grads_finite(m, name) for m in modules):
                return False
            opt.step()
            return True
        before = scaler.get_scale()
        opt.step()  # Lightning's mixed-precision plugin: unscale_, scaler.step, scaler.update
        if scaler.get_scale() >= before:
            return True
        self.overflow_steps += 1
        log.debug(
            "stage %s, step %d: fp16 overflow in %s, loss scale %g -> %g",
            self.stage,
            self.global_step,
            name,
            before,
            scaler.get_scale(),
        )
        if scaler.get_scale() < MIN_LOSS_SCALE:
            self.losses_finite(
                {f"grad({name}) at loss scale {scaler.get_scale():g}": torch.tensor(math.nan)}
            )
        return False

    def log_grid(
        self, key: str, columns: list[tuple[str, Tensor]], max_rows: int = 4
    ) -> Path | None:
        """Save an image grid PNG in the run folder and send it to the loggers (rank zero)."""
        if not self.trainer.is_global_zero:
            return None
        out = (
            Path(self.trainer.default_root_dir)
            / "images"
            / f"{key.replace('/', '_')}_step{self.global_step:07d}.png"
        )
        image = save_grid(columns, out, max_rows=max_rows)
        for logger in self.loggers:
            send_image(logger, key, image, self.global_step)
        return out


class SliceEvalHooks:
    """Routes Lightning's validation/test hooks to ``_eval_start()``, ``_eval_step(batch)`` and
    ``_eval_end(split)`` (``split`` is ``"val"`` or ``"test"``). Mix in before StageModule."""

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


def send_image(logger: Any, key: str, image: np.ndarray, step: int) -> None:
    """Log an (H, W) uint8 image to a wandb or TensorBoard logger; other loggers skip."""
    name = type(logger).__name__
    if name == "WandbLogger":
        logger.log_image(key=key, images=[image], step=step)
    elif name == "TensorBoardLogger":
        logger.experiment.add_image(key, image[None], step)
