"""Training one stage (``vit``, ``disent`` or ``sr``) from its composed config: the task of
``stage=vit|disent|sr`` (:data:`mrsr.dispatch.TASKS`), and the step of ``stage=pipeline``.

:func:`train_stage` instantiates the data module (``data``), the LightningModule
(``stage.module``) and the Trainer (``trainer`` with ``callbacks`` and ``logger``), fits, tests
the best checkpoint and writes the run's records in ``paths.output_dir``: ``results.csv`` /
``results.json`` (stage ``sr``: the test rows) and ``FINISHED.json`` (:data:`FINISHED`: best
and last checkpoint, test metrics), which the pipeline uses to hand checkpoints on and to skip
finished stages.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mrsr.building import build_datamodule, build_module, build_trainer, output_dir
from mrsr.checkpoint import load_checkpoint
from mrsr.dispatch import finish_wandb, log_results_table
from mrsr.errors import CheckpointError, ConfigError
from mrsr.files import atomic_write_text
from mrsr.report.results import print_table, write_results

log = logging.getLogger("mrsr")
FINISHED = "FINISHED.json"
TRAINING_STAGES = ("vit", "disent", "sr")


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
            raise CheckpointError(
                path,
                "a GAN checkpoint of mrsr 0.3 (two optimisers, two steps per batch) cannot be "
                "resumed by this version: start from its generator with sr.init_from=<it>",
            )
    return str(path)


def train_stage(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint, for ``cfg.stage.name`` in ``paths.output_dir``.

    The stage's wandb run (``logger=wandb``) is finished on return, so every stage and
    every multirun job gets its own run.
    """
    try:
        return _train_stage(cfg, output_dir(cfg))
    finally:
        finish_wandb()


def _train_stage(cfg: DictConfig, out: Path) -> dict[str, Any]:
    stage = str(cfg.stage.name)
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"stage {stage!r} is not a training stage ({', '.join(TRAINING_STAGES)})")
    resume = resolve_resume(cfg, out, stage)  # refuse a bad checkpoint before any work
    L.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if trainer.fast_dev_run:
        return {"score": None}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = trainer.test(
        module, datamodule=dm, ckpt_path=best or None, weights_only=True, verbose=False
    )
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    rows = module.test_rows
    last = out / "checkpoints" / "last.ckpt"
    record = {"stage": stage, "best": best or str(last), "last": str(last), "test": metrics}
    if trainer.is_global_zero:
        if rows:
            print_table(rows, module.results_title())
            csv_path, _ = write_results(out, rows)
            log.info("results written to %s", csv_path)
        atomic_write_text(out / FINISHED, json.dumps(record, indent=2) + "\n")
    log_results_table(trainer, rows or ([metrics] if metrics else []), key=f"{stage}/results")
    return {"score": metrics.get("test/score"), **record, "rows": rows}
