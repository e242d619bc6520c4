"""``stage=eval``: score an interpolation baseline or a trained SR checkpoint on the test split."""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mrsr.building import build_datamodule, output_dir
from mrsr.data.degrade import upsample
from mrsr.errors import ConfigError
from mrsr.labels import unlabelled
from mrsr.metrics import RealismMetrics, SRMetrics
from mrsr.results import print_table, write_results

log = logging.getLogger("mrsr")


def load_model(cfg: DictConfig) -> tuple[nn.Module, str]:
    """The network to evaluate and its name: a checkpoint's EMA generator or a baseline."""
    if cfg.get("ckpt"):
        from mrsr.stages.sr import load_generator

        return load_generator(cfg.ckpt, scale=int(cfg.scale)), "sr"
    model = instantiate(unlabelled(cfg.model))
    if getattr(model, "trainable", True):
        raise ConfigError(
            f"model={cfg.model._target_.rsplit('.', 1)[-1]} is a trainable network: "
            "pass ckpt=<stage-sr checkpoint>, "
            "or evaluate a baseline with model=bicubic|bilinear|nearest"
        )
    return model, model.mode


@torch.inference_mode()
def score(
    model: nn.Module,
    loader,
    scale: int,
    device: torch.device,
    degradation: str = "bicubic",
    reference: bool = True,
) -> tuple[dict, dict]:
    """Metrics of ``model`` and (``reference``) of bicubic up-sampling over a loader
    (distortion and realism); ``{}`` for the reference when it is not asked for."""
    names = ("ours", "bicubic") if reference else ("ours",)
    metrics = {
        k: (SRMetrics().to(device), RealismMetrics(scale, degradation).to(device)) for k in names
    }
    model.eval().to(device)
    for lr, hr, meta in loader:
        lr, hr = lr.to(device), hr.to(device)
        for name in names:
            pred = model(lr) if name == "ours" else upsample(lr, scale)
            distortion, realism = metrics[name]
            distortion.update(pred, hr, meta.volume_idx, meta.slice)
            realism.update(pred, hr, lr, meta.volume_idx, meta.slice)
    out = {k: {**d.compute(), **r.row()} for k, (d, r) in metrics.items()}
    return out["ours"], out.get("bicubic", {})


def evaluate(cfg: DictConfig) -> dict:
    model, name = load_model(cfg)
    dm = build_datamodule(cfg)
    dm.setup("test")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = getattr(model, "training_data", {}).get("degradation")
    if trained and trained != dm.store.degradation:
        log.warning(
            "the checkpoint was trained on %s LR images, evaluated here on %s ones",
            trained,
            dm.store.degradation,
        )
    ours, bicubic = score(
        model,
        dm.test_dataloader(),
        dm.scale,
        device,
        dm.store.degradation,
        reference=name != "bicubic",
    )
    info = {"dataset": dm.dataset_name, "scale": dm.scale, "degradation": dm.store.degradation}
    rows = [{"method": name, **info, **ours}]
    if name != "bicubic":
        rows.append({"method": "bicubic", **info, **bicubic})
    print_table(rows, f"{dm.dataset_name} x{dm.scale} ({dm.store.degradation}), test split")
    csv_path, _ = write_results(output_dir(cfg), rows)
    log.info("results written to %s", csv_path)
    return {"score": ours["psnr"], "rows": rows}
