"""``stage=vit|disent|sr``: one training flow for the three stages.

Each stage module ``mrsr.stages.<stage>`` provides ``build(cfg, datamodule) -> StageModule``.
A finished run writes ``FINISHED.json`` (best and last checkpoint, test metrics) in its
folder, which the pipeline uses to hand checkpoints on and to skip finished stages.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mrsr.checkpoint import load_checkpoint
from mrsr.errors import CheckpointError, ConfigError
from mrsr.results import atomic_write_text
from mrsr.tasks.common import (
    build_datamodule,
    build_trainer,
    finish_wandb,
    log_results_table,
    output_dir,
)
from mrsr.tasks.resumable import make_resumable

log = logging.getLogger("mrsr")
FINISHED = "FINISHED.json"


def resolve_resume(cfg: DictConfig, out: Path, stage: str | None = None) -> str | None:
    """``ckpt_path=last`` means this run folder's ``checkpoints/last.ckpt`` (if present).

    The checkpoint is checked (safe load, stage and scale) before Lightning restores it, so a
    corrupt or foreign file is refused in one line.
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        path = out / "checkpoints" / "last.ckpt"
        if not path.exists():
            log.info("no %s yet: starting from scratch", path)
            return None
    else:
        path = Path(str(ckpt))
        if not path.exists():
            raise ConfigError(f"ckpt_path={ckpt}: checkpoint not found")
    if stage is not None:
        ckpt = load_checkpoint(path, stage=stage, scale=int(cfg.scale) if stage == "sr" else None)
        if stage == "sr" and len(ckpt.get("optimizer_states") or []) > 1:
            raise CheckpointError(path, "a GAN checkpoint of mrsr 0.3 (two optimisers, two steps per batch) cannot be "
                                        "resumed by this version: start from its generator with sr.init_from=<it>")
    return str(path)


def train_stage(cfg: DictConfig, stage: str, out: Path | None = None) -> dict[str, Any]:
    """Fit, then test the best checkpoint, for ``stage`` in ``out`` (the run folder).

    The stage's wandb run (``logger=wandb``) is finished on return, so every stage and
    every multirun job gets its own run.
    """
    try:
        return _train_stage(cfg, stage, out or output_dir(cfg))
    finally:
        finish_wandb()


def _train_stage(cfg: DictConfig, stage: str, out: Path) -> dict[str, Any]:
    resume = resolve_resume(cfg, out, stage)  # refuse a bad checkpoint before any work
    L.seed_everything(int(cfg.seed), workers=True)
    stage_cfg = cfg[stage]
    dm = build_datamodule(cfg, stage_cfg.batch_size, stage_cfg.train_crop)
    dm.setup("fit")
    module = importlib.import_module(f"mrsr.stages.{stage}").build(cfg, dm)
    trainer = build_trainer(cfg, stage_cfg, default_root_dir=str(out))
    # Data order and patches from (seed, epoch, position): exact resume, also mid-epoch.
    make_resumable(dm, int(cfg.seed), lambda: trainer)
    for cb in trainer.checkpoint_callbacks:
        cb.dirpath = str(out / "checkpoints")
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if trainer.fast_dev_run:
        return {"score": None}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(module, datamodule=dm, ckpt_path=best or None, weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    rows = getattr(module, "test_rows", None) or ([metrics] if metrics else [])
    log_results_table(trainer, rows, key=f"{stage}/results")
    last = out / "checkpoints" / "last.ckpt"
    record = {"stage": stage, "best": best or str(last), "last": str(last), "test": metrics}
    if trainer.is_global_zero:
        atomic_write_text(out / FINISHED, json.dumps(record, indent=2) + "\n")
    score = metrics.get("test/score")
    return {"score": score, **record}


def train_vit(cfg: DictConfig) -> dict[str, Any]:
    return train_stage(cfg, "vit")


def train_disent(cfg: DictConfig) -> dict[str, Any]:
    return train_stage(cfg, "disent")


def train_sr(cfg: DictConfig) -> dict[str, Any]:
    return train_stage(cfg, "sr")
