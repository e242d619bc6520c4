"""Objects built from the composed config: run folder, data module, trainer, stage module."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from mrsr.data.datamodule import MRDataModule
from mrsr.dispatch import in_multirun
from mrsr.errors import ConfigError, user_error
from mrsr.stages.base import StageModule

log = logging.getLogger("mrsr")


def output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir``, the one setting for where a run writes (created)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def build(node: DictConfig, **given: Any) -> Any:
    """``instantiate(node)``; an expected error of the target comes out as itself (Hydra wraps
    exceptions raised by a target in its own)."""
    try:
        return instantiate(node, **given, _convert_="all")
    except Exception as err:
        cause = user_error(err)
        if cause is None or cause is err:
            raise
        raise cause from None


def build_datamodule(cfg: DictConfig) -> MRDataModule:
    """``cfg.data`` as it stands (a training stage's config holds its batch and patch size)."""
    return build(cfg.data)


def build_module(cfg: DictConfig, **given: Any) -> StageModule:
    """``cfg.stage.module`` (``given`` objects, e.g. extractors, replace config entries)."""
    module = build(cfg.stage.module, **given)
    if not isinstance(module, StageModule):
        raise ConfigError(
            f"stage.module: {cfg.stage.module.get('_target_')} is not an mrsr stage module"
        )
    return module


def _named(group: DictConfig | None) -> list[Any]:
    """Instantiate every named entry of a logger/callback group; null entries are off."""
    if not group:
        return []
    return [build(c) for c in group.values() if c is not None and "_target_" in c]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """``cfg.trainer`` with the loggers of ``cfg.logger`` and the callbacks of ``cfg.callbacks``
    (Lightning's learning-rate monitor is left out when there is no logger: it refuses to run)."""
    trainer_cfg = cfg.trainer
    epochs = trainer_cfg.get("max_epochs")
    if int(trainer_cfg.get("max_steps", -1)) < 0 and (epochs is None or int(epochs) < 0):
        raise ConfigError(
            "a training stage needs max_steps or max_epochs >= 0 "
            "(trainer.max_steps, trainer.max_epochs)"
        )
    loggers = _named(cfg.get("logger"))
    callbacks = _named(cfg.get("callbacks"))
    if not loggers:
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer = build(trainer_cfg, logger=loggers or False, callbacks=callbacks)
    check_launch(trainer)
    return trainer


def check_launch(trainer: L.Trainer) -> None:
    """Refuse a Hydra multirun whose jobs would re-launch the command line per rank.

    Lightning's ``ddp`` launcher re-executes ``sys.argv``; under ``-m`` every rank would run
    the whole sweep again. SLURM/torchrun start the ranks themselves, which is supported.
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        in_multirun()
        and type(launcher).__name__ == "_SubprocessScriptLauncher"
        and not trainer.strategy.cluster_environment.creates_processes_externally
    ):
        raise ConfigError(
            "multirun (-m) with a multi-process trainer on the basic launcher is not supported: "
            "use hydra/launcher=slurm, torchrun, or run the grid points one by one"
        )
