"""Which task a config runs and how it ends: the registry of tasks, the error policy, logging
and the wandb run.

:func:`run_task` runs the task of ``cfg.stage.name`` (:data:`TASKS`, import strings of the
functions in :mod:`mrsr.tasks`, and of :func:`mrsr.training.train_stage` for the three training
stages): expected errors become one line on stderr and exit status 2; in a multirun sweep a
failing job is marked ``FAILED`` and the sweep goes on.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mrsr.errors import MrsrError

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("mrsr")

TASKS = {
    "vit": "mrsr.training:train_stage",
    "disent": "mrsr.training:train_stage",
    "sr": "mrsr.training:train_stage",
    "eval": "mrsr.tasks.evaluate:evaluate",
    "predict": "mrsr.tasks.predict:predict",
    "pipeline": "mrsr.tasks.pipeline:pipeline",
    "throughplane": "mrsr.tasks.throughplane:throughplane",
}


def get_task(name: str):
    if name not in TASKS:
        raise MrsrError(f"unknown stage {name!r} (choose from: {', '.join(TASKS)})")
    module, func = TASKS[name].split(":")
    return getattr(importlib.import_module(module), func)


def in_multirun() -> bool:
    try:
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def run_task(cfg: DictConfig) -> float | None:
    """Run ``cfg.stage.name``. Expected errors become one line on stderr and exit status 2.

    In a multirun sweep a failing job writes ``FAILED`` (with the reason) into its run
    folder and returns, so the other jobs still run.
    """
    multirun = in_multirun()
    try:
        task = get_task(cfg.stage.name)
        log_once()
        check_run_folders(cfg)
        result = task(cfg)
    except MrsrError as err:
        msg = f"mrsr: {err}"
        if not multirun:
            to_log_file(logging.ERROR, msg)
            print(msg, file=sys.stderr)
            raise SystemExit(2) from None
        _mark_failed(cfg, msg)
        return None
    except Exception:
        if not multirun:
            raise
        _mark_failed(cfg, traceback.format_exc())
        return None
    finally:
        finish_wandb()  # one wandb run per job: multirun jobs must not merge
    return result.get("score") if isinstance(result, dict) else None


def check_run_folders(cfg: DictConfig) -> None:
    """The run folder (``paths.output_dir``) and the checkpoint folders (``callbacks.*.dirpath``)
    can be written: refused in one line before any work, not with a traceback after it."""
    from omegaconf import OmegaConf

    from mrsr.files import check_writable

    folders = {"paths.output_dir": cfg.paths.output_dir}
    for name, node in (cfg.get("callbacks") or {}).items():
        if OmegaConf.is_dict(node) and node.get("dirpath"):
            folders[f"callbacks.{name}.dirpath"] = node.dirpath
    for key, folder in folders.items():
        check_writable(Path(str(folder)), key)


def to_log_file(level: int, msg: str) -> None:
    """Write ``msg`` to the run's log file(s) only (the console already shows it on stderr)."""
    record = logging.LogRecord("mrsr", level, __file__, 0, msg, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# Third-party lines that say nothing about the run: advertising tips and a deprecation inside
# Lightning that its users cannot act on.
QUIET_PREFIXES = ("💡 Tip:",)
QUIET_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_PREFIXES)


def quiet_third_party() -> None:
    """Filter third-party tips and known-harmless deprecation warnings where they are emitted."""
    import warnings

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def log_once() -> None:
    """Lightning's loggers print through their own console handler and also pass each record
    on to the root logger that Hydra configured (console and the run's log file): every line
    appeared twice. With a configured root logger they keep only the second route. Third-party
    tips and known deprecations are filtered (:func:`quiet_third_party`)."""
    quiet_third_party()
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def _mark_failed(cfg: DictConfig, msg: str) -> None:
    log.error("job failed: %s", msg.strip().splitlines()[-1])
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "FAILED").write_text(msg)


# -- wandb -----------------------------------------------------------------------------------


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
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
