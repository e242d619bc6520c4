"""``stage=pipeline``: train ``vit`` -> ``disent`` -> ``sr`` and hand the checkpoints on.

Layout of a pipeline folder (``paths.output_dir``, the run folder)::

    <dir>/vit/       stage vit   (FINISHED.json, checkpoints/best.ckpt, last.ckpt, logs)
    <dir>/disent/    stage disent
    <dir>/sr/        stage sr    (results.csv / results.json of the test split)

Two-phase SR (SRGAN/ESRGAN practice): when the loss preset has adversarial or feature terms
and ``pipeline.pretrain_fraction > 0``, the SR budget ``sr.max_steps`` (generator updates; or
``sr.max_epochs`` when steps are unbounded) is split: a PSNR-oriented L1 phase (``<dir>/sr_l1``,
that share of the budget) and the preset's fine-tuning from its best generator (``<dir>/sr``,
the rest, ``sr.init_from``). The whole run makes as many generator updates as
``stage=sr loss=l1`` with the same settings. In a multirun the L1 phase is trained once per
data/model/schedule/seed in the shared folder (below) and reused by every preset.

A stage whose ``FINISHED.json`` exists is skipped and its best checkpoint reused; an
interrupted stage resumes from its ``checkpoints/last.ckpt``. Rerunning the same command
with ``hydra.run.dir=<that folder>`` therefore continues where it stopped.

Each stage runs with the config ``stage=<stage>`` would compose (:func:`stage_config`): its
lengths and loader sizes come from its recipe group (``vit.max_steps``, ``sr.batch_size``, ...).

The extractors (``vit``, ``disent``) are trained only when a term of the loss preset reads them
(a ViT term; a structure or texture term) and no checkpoint is given
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
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from mrsr.building import output_dir
from mrsr.errors import ConfigError
from mrsr.files import atomic_write_text
from mrsr.labels import L1_PHASE, unlabelled
from mrsr.losses.objective import (
    EXTRACTORS,
    l1_phase_terms,
    needed_extractors,
    pretrains_with_l1,
)
from mrsr.training import FINISHED, train_stage

log = logging.getLogger("mrsr")

STAGES = ("vit", "disent", "sr")
PRETRAIN_FOLDER = "sr_l1"  # the L1 phase of a two-phase SR stage

# Config keys that do not change what an extractor learns (left out of its folder key).
_KEY_IGNORE = {"num_workers", "eval_batch_size", "max_cached_volumes", "on_bad_file", "cache_dir"}


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
    """``cfg`` with ``pipeline.extractors`` (e.g. ``{data: {contrasts: [PD, T1, T2]}}``) merged
    in."""
    extra = cfg.pipeline.get("extractors")
    if not extra:
        return cfg
    return OmegaConf.merge(cfg, extra)  # type: ignore[return-value]


def extractor_key(cfg: DictConfig, stage: str) -> str:
    """A short, readable folder name for what the extractor ``stage`` is trained on and with."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    ignore = set(_KEY_IGNORE)
    if not (stage == "disent" and cfg.disent.get("lr_views")):
        ignore |= {"scale", "degradation"}  # trained on HR slices only
    parts = {
        "data": {k: v for k, v in data.items() if k not in ignore},  # type: ignore[union-attr]
        "net": OmegaConf.to_container(cfg[stage], resolve=True),
        "seed": cfg.seed,
        "vit": OmegaConf.to_container(cfg.vit, resolve=True) if stage == "disent" else None,
    }
    return _key(data, parts)


def _key(data: Any, parts: dict[str, Any]) -> str:
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
    """Shared extractor folder: ``pipeline.extractors_dir``, in a multirun
    ``<sweep>/extractors``."""
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


def stage_config(cfg: DictConfig, stage: str, out: Path) -> DictConfig:
    """The config of one pipeline stage: ``cfg`` with ``conf/stage/<stage>.yaml`` merged in (what
    ``stage=<stage>`` composes: its module, trainer lengths and loader sizes from the recipe
    groups), writing into ``out`` (``paths.output_dir``), resuming from its ``last.ckpt``."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    own = OmegaConf.load(resources.files("mrsr.conf").joinpath("stage", f"{stage}.yaml"))
    for group in ("trainer", "data"):
        given = [k for k in own[group] if k in cfg[group]]
        if given:  # name the recipe key the stage file routes it from, e.g. ${vit.train_crop}
            raw = str(OmegaConf.to_container(own[group], resolve=False)[given[0]])
            routed = re.fullmatch(rf"\$\{{{stage}\.(\w+)}}", raw)
            where = (
                f"the recipes (vit.{routed[1]}, disent.{routed[1]}, sr.{routed[1]})"
                if routed
                else f"conf/stage/<stage>.yaml ({raw})"
            )
            raise ConfigError(
                f"stage=pipeline: {group}.{given[0]} is set per stage here, from {where}"
            )
    last = out / "checkpoints" / "last.ckpt"
    with open_dict(sub):
        sub.pop("stage")
        sub.merge_with(own)
        sub.paths.output_dir = str(out)
        sub.ckpt_path = str(last) if last.is_file() else None
        wandb = sub.get("logger", {}) and sub.logger.get("wandb")
        if wandb:  # one wandb run per stage, named after it, in the pipeline's group
            wandb.name = f"{_resolved(cfg, 'logger.wandb.name', 'pipeline')}/{stage}"
            if wandb.get("group") is not None:
                wandb.group = _resolved(cfg, "logger.wandb.group", "pipeline")
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


def run_pipeline_stage(cfg: DictConfig, stage: str, out: Path) -> dict[str, Any]:
    """Train ``stage`` into ``out`` unless it has finished there already."""
    done = read_finished(out)
    if done is not None:
        log.info("skipping %s: finished (%s)", stage, out / FINISHED)
        return done
    log.info("training %s in %s", stage, out)
    record = train_stage(stage_config(cfg, stage, out))
    if not record.get("best"):
        raise ConfigError(f"{out}: stage {stage} finished without a checkpoint (fast_dev_run?)")
    return record


def two_phase(cfg: DictConfig) -> bool:
    """Whether the SR stage runs as an L1 phase then a fine-tuning phase: a preset with
    adversarial or feature terms, ``pipeline.pretrain_fraction > 0`` and no ``sr.init_from``
    given (a given generator is the start instead of an L1 phase)."""
    frac = float(cfg.pipeline.get("pretrain_fraction") or 0.0)
    if not 0 <= frac < 1:
        raise ConfigError(f"pipeline.pretrain_fraction={frac} must be in [0, 1) (0: one phase)")
    return pretrains_with_l1(cfg.loss) and frac > 0 and not cfg.sr.get("init_from")


def split_budget(cfg: DictConfig) -> tuple[dict[str, int], dict[str, int]]:
    """``sr.max_steps`` (or ``sr.max_epochs`` when steps are unbounded) split into the L1 and
    the fine-tuning phase by ``pipeline.pretrain_fraction``; each phase gets at least one."""
    frac = float(cfg.pipeline.pretrain_fraction)
    if not 0 < frac < 1:
        raise ConfigError(f"pipeline.pretrain_fraction={frac} must be in (0, 1) for two phases")
    key = "max_steps" if int(cfg.sr.max_steps) > 0 else "max_epochs"
    total = int(cfg.sr[key])
    if total < 0:
        raise ConfigError("stage sr needs max_steps or max_epochs >= 0")
    if total < 2:
        raise ConfigError(f"sr.{key}={total}: two SR phases need a budget of at least 2")
    first = min(max(1, round(frac * total)), total - 1)
    return {key: first}, {key: total - first}


def pretrain_cfg(cfg: DictConfig, budget: dict[str, int]) -> DictConfig:
    """``cfg`` for the L1 phase: the preset's pixel term alone against HR, its share of the
    budget."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(sub):
        sub.loss = {
            "name": L1_PHASE,
            "label": "L1 phase of a two-phase run",
            "terms": l1_phase_terms(OmegaConf.to_container(cfg.loss, resolve=True)),  # type: ignore[arg-type]
        }
        # unused without adv: not in the key
        sub.sr.update(
            {
                "init_from": None,
                "vit_ckpt": None,
                "disent_ckpt": None,
                **budget,
                "discriminator": None,
                "gan_loss": "nsgan",
                "d_lr": None,
                "d_betas": None,
                "d_warmup": 0,
            }
        )
    return sub


def pretrain_key(cfg: DictConfig) -> str:
    """Folder name of an L1 phase: what it trains on, with which network, schedule and seed."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    parts = {
        "data": {k: v for k, v in data.items() if k not in _KEY_IGNORE},  # type: ignore[union-attr]
        "model": unlabelled(OmegaConf.to_container(cfg.model, resolve=True)),  # type: ignore[arg-type]
        "sr": OmegaConf.to_container(cfg.sr, resolve=True),
        "loss": unlabelled(OmegaConf.to_container(cfg.loss, resolve=True)),  # type: ignore[arg-type]
        "trainer": {
            k: v
            for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()  # type: ignore[union-attr]
            if k not in ("default_root_dir", "log_every_n_steps", "enable_model_summary")
        },
        "callbacks": OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=False),
        "seed": cfg.seed,
    }
    return f"{PRETRAIN_FOLDER}-" + _key(data, parts)


def run_sr(
    cfg: DictConfig, root: Path, shared: Path | None, records: dict[str, Any]
) -> dict[str, Any]:
    """Stage ``sr``, as two phases when :func:`two_phase` says so."""
    if not two_phase(cfg):
        if cfg.sr.get("init_from"):
            log.info("sr.init_from=%s given: one phase from it, no L1 phase", cfg.sr.init_from)
        return run_pipeline_stage(cfg, "sr", root / "sr")
    first, rest = split_budget(cfg)
    pcfg = pretrain_cfg(cfg, first)
    out = (
        root / PRETRAIN_FOLDER if shared is None else shared / pretrain_key(pcfg) / PRETRAIN_FOLDER
    )
    with file_lock(out.parent):
        records[PRETRAIN_FOLDER] = run_pipeline_stage(pcfg, "sr", out)
    start = records[PRETRAIN_FOLDER]["best"]
    with open_dict(cfg):
        cfg.sr.update({"init_from": start, **rest})
    log.info("fine-tuning from %s (%s)", start, rest)
    return run_pipeline_stage(cfg, "sr", root / "sr")


def pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run the stages of ``cfg.pipeline.stages`` in order, handing checkpoints on."""
    stages = list(cfg.pipeline.get("stages") or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(
            f"pipeline.stages: unknown stage(s) {', '.join(unknown)} "
            f"(choose from {', '.join(STAGES)})"
        )
    if cfg.trainer.get("fast_dev_run"):
        raise ConfigError(
            "stage=pipeline needs finished checkpoints: "
            "run it without debug=fast (use tiny lengths)"
        )
    root = output_dir(cfg)
    shared = extractors_root(cfg, root)
    needed = needed_extractors(cfg.loss) if "sr" in stages else list(EXTRACTORS)
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
                records[stage] = run_pipeline_stage(ecfg, stage, out)
            with open_dict(cfg):
                cfg.sr[f"{stage}_ckpt"] = records[stage]["best"]
        else:
            records[stage] = run_sr(cfg, root, shared, records)
    summary = {s: {"best": r.get("best"), "test": r.get("test")} for s, r in records.items()}
    atomic_write_text(root / "PIPELINE.json", json.dumps(summary, indent=2) + "\n")
    log.info("pipeline finished in %s", root)
    last = records.get("sr") or records.get(stages[-1], {})
    return {
        "score": last.get("score", (last.get("test") or {}).get("test/score")),
        "stages": records,
    }
