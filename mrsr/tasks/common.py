"""Building blocks shared by the task functions: data, trainer, loggers, callbacks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mrsr.data.datamodule import MRDataModule
from mrsr.errors import ConfigError

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
    callbacks = _named(cfg.get("callbacks"))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(kwargs)
    return instantiate(trainer_cfg, logger=loggers or False, callbacks=callbacks, _convert_="all")
