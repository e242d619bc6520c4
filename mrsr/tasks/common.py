"""Building blocks shared by the task functions: data, trainer, loggers, callbacks."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from mrsr.data.datamodule import MRDataModule
from mrsr.errors import ConfigError
from mrsr.results import atomic_write

log = logging.getLogger("mrsr")


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_datamodule(cfg: DictConfig, batch_size: int | None = None, train_crop: int | None = None) -> MRDataModule:
    """Instantiate ``cfg.data`` with the stage's batch size and training crop."""
    kwargs: dict[str, Any] = {}
    if batch_size is not None:
        kwargs["batch_size"] = int(batch_size)
    if train_crop is not None:
        kwargs["patch_size"] = int(train_crop)
    return instantiate(cfg.data, **kwargs, _convert_="all")


def _named(group: DictConfig | None) -> list[Any]:
    """Instantiate every named entry of a logger/callback group; null entries are off."""
    if not group:
        return []
    return [instantiate(c, _convert_="all") for c in group.values() if c is not None and "_target_" in c]


def build_trainer(cfg: DictConfig, stage_cfg: DictConfig | None = None, **overrides: Any) -> L.Trainer:
    """Trainer from ``cfg.trainer``; lengths and validation cadence from the stage's group."""
    kwargs: dict[str, Any] = {}
    if stage_cfg is not None:
        kwargs["max_steps"] = int(stage_cfg.get("max_steps", -1))
        kwargs["max_epochs"] = int(stage_cfg.get("max_epochs", -1))
        if kwargs["max_steps"] < 0 and kwargs["max_epochs"] < 0:
            raise ConfigError("a stage needs max_steps or max_epochs >= 0")
        vci = stage_cfg.get("val_check_interval", 1.0)
        kwargs["val_check_interval"] = vci
        if isinstance(vci, int) and not isinstance(vci, bool):
            kwargs["check_val_every_n_epoch"] = None
    kwargs.update(overrides)
    loggers = _named(cfg.get("logger"))
    callbacks = [*_named(cfg.get("callbacks")), RngState(), SameRunDir()]
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(kwargs)
    if not trainer_cfg.get("plugins"):
        trainer_cfg["plugins"] = [AtomicCheckpointIO()]
    trainer = instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks, _convert_="all")
    check_launch(trainer)
    return trainer


def check_launch(trainer: L.Trainer) -> None:
    """Refuse a Hydra multirun whose jobs would re-launch the command line per rank.

    Lightning's ``ddp`` launcher re-executes ``sys.argv``; under ``-m`` every rank would run
    the whole sweep again. SLURM/torchrun start the ranks themselves, which is supported.
    """
    from mrsr.tasks import _in_multirun

    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        _in_multirun()
        and type(launcher).__name__ == "_SubprocessScriptLauncher"
        and not trainer.strategy.cluster_environment.creates_processes_externally
    ):
        raise ConfigError(
            "multirun (-m) with a multi-process trainer on the basic launcher is not supported: "
            "use hydra/launcher=slurm, torchrun, or run the grid points one by one"
        )


class RngState(L.Callback):
    """Saves and restores the torch, CUDA, numpy and Python RNG states with every checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so ``weights_only=True`` loading accepts it.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
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
            dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
            every_n_train_steps=every_n_train_steps, enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file in the target folder, fsyncs it and renames it
    into place, so a kill during a save leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote file systems: Lightning's own (transactional) writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)

        atomic_write(path, save)


def wandb_loggers(trainer: L.Trainer) -> list[Any]:
    return [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]


def log_results_table(trainer: L.Trainer, rows: list[dict[str, Any]], key: str = "results") -> None:
    """Send the final results rows to every wandb logger of ``trainer`` as a ``wandb.Table``."""
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    data = [[row.get(c) for c in columns] for row in rows]
    for lg in wandb_loggers(trainer):
        lg.log_table(key=key, columns=columns, data=data)


def finish_wandb() -> None:
    """Close the active wandb run (if any), so the next job or stage starts its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
