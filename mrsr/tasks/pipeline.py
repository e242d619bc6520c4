"""``stage=pipeline``: train ``vit`` -> ``disent`` -> ``sr`` and hand the checkpoints on.

Layout of a pipeline folder (``pipeline.dir``, by default the run folder)::

    <dir>/vit/       stage vit   (FINISHED.json, checkpoints/best.ckpt, last.ckpt, logs)
    <dir>/disent/    stage disent
    <dir>/sr/        stage sr    (results.csv / results.json of the test split)

A stage whose ``FINISHED.json`` exists is skipped and its best checkpoint reused; an
interrupted stage resumes from its ``checkpoints/last.ckpt``. Rerunning the same command
with ``pipeline.dir=<that folder>`` therefore continues where it stopped.

The extractors (``vit``, ``disent``) are trained only when the loss preset uses them
(``loss.vit > 0``; ``loss.str + loss.tex > 0``) and no checkpoint is given
(``sr.vit_ckpt`` / ``sr.disent_ckpt``). With ``pipeline.extractors_dir`` set (and, in a
multirun, by default ``<sweep dir>/extractors``) they are trained once per distinct
data/extractor configuration into ``<extractors_dir>/<key>/{vit,disent}`` and reused by
every job of the sweep; a file lock keeps concurrent jobs from training the same one twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mrsr.errors import ConfigError
from mrsr.tasks.train import FINISHED, train_stage

log = logging.getLogger("mrsr")

STAGES = ("vit", "disent", "sr")
EXTRACTORS = ("vit", "disent")
# Config keys that do not change what an extractor learns (left out of its folder key).
_KEY_IGNORE = {"num_workers", "eval_batch_size", "max_cached_volumes", "on_bad_file", "cache_dir"}


def needed_extractors(cfg: DictConfig) -> list[str]:
    """The extractor stages the SR loss preset uses."""
    loss = cfg.loss
    needed = []
    if float(loss.get("vit", 0.0)) > 0:
        needed.append("vit")
    if float(loss.get("str", 0.0)) > 0 or float(loss.get("tex", 0.0)) > 0:
        needed.append("disent")
    return needed


def read_finished(folder: Path) -> dict[str, Any] | None:
    """The ``FINISHED.json`` record of a stage folder whose best checkpoint exists, else None."""
    path = folder / FINISHED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable: the stage is trained again", path)
        return None
    if not record.get("best") or not Path(record["best"]).is_file():
        log.warning("%s names a missing checkpoint: the stage is trained again", path)
        return None
    return record


def extractor_cfg(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``pipeline.extractors`` (e.g. ``{data: {contrasts: [PD, T1, T2]}}``) merged in."""
    extra = cfg.pipeline.get("extractors")
    if not extra:
        return cfg
    return OmegaConf.merge(cfg, extra)  # type: ignore[return-value]


def extractor_key(cfg: DictConfig, stage: str) -> str:
    """A short, readable folder name for what the extractor ``stage`` is trained on and with."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    ignore = _KEY_IGNORE | {"scale", "degradation"}  # both extractors train on HR slices only
    parts = {
        "data": {k: v for k, v in data.items() if k not in ignore},  # type: ignore[union-attr]
        "net": OmegaConf.to_container(cfg[stage], resolve=True),
        "seed": cfg.seed,
        "vit": OmegaConf.to_container(cfg.vit, resolve=True) if stage == "disent" else None,
    }
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    target = str(data.get("_target_", "data")).rsplit(".", 1)[-1].removesuffix("DataModule").lower()  # type: ignore[union-attr]
    contrasts = "-".join(map(str, data.get("contrasts") or []))  # type: ignore[union-attr]
    return f"{target}{'-' + contrasts if contrasts else ''}-{digest}"


def _sweep_dir() -> Path | None:
    try:
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    except ValueError:
        return None


def extractors_root(cfg: DictConfig, root: Path) -> Path | None:
    """Shared extractor folder: ``pipeline.extractors_dir``, in a multirun ``<sweep>/extractors``."""
    given = cfg.pipeline.get("extractors_dir")
    if given:
        return Path(given)
    sweep = _sweep_dir()
    return sweep / "extractors" if sweep is not None else None


@contextlib.contextmanager
def file_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` (POSIX); a no-op where ``fcntl`` is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_cfg(cfg: DictConfig, stage: str, out: Path) -> DictConfig:
    """A copy of ``cfg`` for one stage: loggers and outputs in ``out``, resume from its last.ckpt."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    last = out / "checkpoints" / "last.ckpt"
    with open_dict(sub):
        sub.paths.output_dir = str(out)
        sub.ckpt_path = str(last) if last.is_file() else None
        wandb = sub.get("logger", {}) and sub.logger.get("wandb")
        if wandb:  # one wandb run per stage, named after it
            wandb.name = f"{_resolved(cfg, 'logger.wandb.name', 'pipeline')}/{stage}"
            wandb.job_type = stage
    if last.is_file():
        log.info("resuming %s from %s", stage, last)
    return sub


def _resolved(cfg: DictConfig, key: str, default: str) -> str:
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - e.g. hydra resolvers outside a Hydra run
        return default
    return default if value is None else str(value)


def run_stage(cfg: DictConfig, stage: str, out: Path) -> dict[str, Any]:
    """Train ``stage`` into ``out`` unless it has finished there already."""
    done = read_finished(out)
    if done is not None:
        log.info("skipping %s: finished (%s)", stage, out / FINISHED)
        return done
    log.info("training %s in %s", stage, out)
    record = train_stage(stage_cfg(cfg, stage, out), stage, out=out)
    if not record.get("best"):
        raise ConfigError(f"{out}: stage {stage} finished without a checkpoint (fast_dev_run?)")
    return record


def pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run the stages of ``cfg.pipeline.stages`` in order, handing checkpoints on."""
    stages = list(cfg.pipeline.get("stages") or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"pipeline.stages: unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})")
    if cfg.trainer.get("fast_dev_run"):
        raise ConfigError("stage=pipeline needs finished checkpoints: run it without debug=fast (use tiny lengths)")
    root = Path(cfg.pipeline.dir)
    root.mkdir(parents=True, exist_ok=True)
    shared = extractors_root(cfg, root)
    needed = needed_extractors(cfg) if "sr" in stages else list(EXTRACTORS)
    given = {"vit": cfg.sr.get("vit_ckpt"), "disent": cfg.sr.get("disent_ckpt")}
    records: dict[str, Any] = {}
    for stage in (s for s in STAGES if s in stages):
        if stage in EXTRACTORS:
            if stage not in needed:
                log.info("skipping %s: the loss preset does not use it", stage)
                continue
            if given[stage]:
                log.info("skipping %s: using sr.%s_ckpt=%s", stage, stage, given[stage])
                continue
            ecfg = extractor_cfg(cfg)
            out = root / stage if shared is None else shared / extractor_key(ecfg, stage) / stage
            with file_lock(out.parent):
                records[stage] = run_stage(ecfg, stage, out)
            with open_dict(cfg):
                cfg.sr[f"{stage}_ckpt"] = records[stage]["best"]
        else:
            records[stage] = run_stage(cfg, stage, root / stage)
    summary = {s: {"best": r.get("best"), "test": r.get("test")} for s, r in records.items()}
    (root / "PIPELINE.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("pipeline finished in %s", root)
    last = records.get("sr") or records.get(stages[-1], {})
    return {"score": last.get("score", (last.get("test") or {}).get("test/score")), "stages": records}

