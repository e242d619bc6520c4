"""Lightning callbacks and the checkpoint writer of every training stage (``conf/callbacks``)."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mrsr.errors import ConfigError
from mrsr.files import atomic_write


class RngState(L.Callback):
    """Saves and restores the torch, CUDA, numpy and Python RNG states with every checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so ``weights_only=True`` loading accepts it.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [
                kind,
                torch.from_numpy(keys.astype(np.int64)),
                int(pos),
                int(has_gauss),
                float(gauss),
            ],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)


class SameRunDir(L.Callback):
    """Stops a distributed run whose ranks resolved different run folders (e.g. torchrun
    without ``hydra.run.dir=...``: each rank evaluates ``${now:...}`` itself)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        dirs: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(dirs, os.path.abspath(trainer.default_root_dir))
        if len(set(dirs)) > 1:
            raise ConfigError(
                f"ranks write to different run folders ({dirs[0]} vs {dirs[-1]}): "
                "pass hydra.run.dir=<folder> when launching with torchrun or srun"
            )


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest state at every validation (or every ``every_n_train_steps``)
    and at the end of training, whatever the score. ``ckpt_path=last`` resumes from it.

    (Lightning's ``save_last`` only writes when a top-k checkpoint was written in that step.)
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar; with unbounded epochs (a ``max_steps`` budget) it shows
    ``step n/max_steps`` instead of ``Epoch e/-2``. When the output is not a terminal (a log
    file, a pipe, a batch job) the bar cannot be seen until the end, so a log line reports the
    step, the loss and the elapsed time every ``log_every`` seconds."""

    def __init__(self, log_every: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_every = log_every
        self._t0: float | None = None
        self._last = 0.0
        self.interactive = sys.stdout.isatty()
        if not self.interactive:
            self.disable()  # a bar in a log file is only its last frame

    def _log_progress(self, trainer: L.Trainer) -> None:
        if self.interactive or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = self._last = now
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        if now - self._last < self.log_every and trainer.global_step < total:
            return
        self._last = now
        loss = trainer.callback_metrics.get("train/loss")
        text = f", train/loss {float(loss):.4g}" if loss is not None else ""
        logging.getLogger("mrsr").info(
            "step %d/%d%s, %.0f s", trainer.global_step, int(total), text, now - self._t0
        )

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        text = f"step {trainer.global_step}" + (
            f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        )
        return (
            f"{text:{len(self.validation_description)}}"
            if len(self.validation_description) > len(text)
            else text
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self._log_progress(trainer)
        if (
            self.progress is not None
            and self.train_progress_bar_id is not None
            and (trainer.max_epochs is None or trainer.max_epochs < 0)
        ):
            self.progress.update(
                self.train_progress_bar_id, description=self._get_train_description(0)
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file in the target folder, fsyncs it and renames it
    into place, so a kill during a save leaves the previous checkpoint intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # remote file systems: Lightning's own (transactional) writer
            return super().save_checkpoint(checkpoint, path, storage_options)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)

        atomic_write(Path(path), save)
