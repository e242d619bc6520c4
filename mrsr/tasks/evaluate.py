"""``stage=eval``: score an interpolation baseline or a trained SR checkpoint on the test split."""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mrsr.building import build_datamodule, output_dir
from mrsr.errors import ConfigError
from mrsr.generators import load_trained
from mrsr.labels import unlabelled
from mrsr.metrics import RealismMetrics, SRMetrics
from mrsr.ops import upsample
from mrsr.report.results import print_table, write_results

log = logging.getLogger("mrsr")


def load_model(cfg: DictConfig) -> tuple[nn.Module, str, str | None]:
    """The network to evaluate, its name and the LR operator it was trained on (None for a
    baseline): a checkpoint's EMA generator or an interpolation."""
    if cfg.get("ckpt"):
        trained = load_trained(cfg.ckpt, scale=int(cfg.scale))
        return trained.net, "sr", trained.degradation
    model = instantiate(unlabelled(cfg.model))
    if getattr(model, "trainable", True):
        raise ConfigError(
            f"model={cfg.model._target_.rsplit('.', 1)[-1]} is a trainable network: "
            "pass ckpt=<stage-sr checkpoint>, "
            "or evaluate a baseline with model=bicubic|bilinear|nearest"
        )
    return model, model.mode, None


# classical baselines scored beside a trained network: bicubic, and zero-filling (sinc), the
# strongest for LR acquired in k-space
REFERENCES = ("bicubic", "zerofill")


@torch.inference_mode()
def score(
    model: nn.Module,
    loader,
    scale: int,
    device: torch.device,
    degradation: str = "bicubic",
    references: tuple[str, ...] = REFERENCES,
) -> dict[str, dict]:
    """Metrics (distortion and realism) over a loader of ``model`` (key ``"ours"``) and of each
    interpolation in ``references`` (keyed by its name). ``degradation``: the nominal operator
    of the re-degradation error."""
    names = ("ours", *references)
    metrics = {
        k: (SRMetrics().to(device), RealismMetrics(scale, degradation).to(device)) for k in names
    }
    model.eval().to(device)
    for lr, hr, meta in loader:
        lr, hr = lr.to(device), hr.to(device)
        for name in names:
            pred = model(lr) if name == "ours" else upsample(lr, scale, name)
            distortion, realism = metrics[name]
            distortion.update(pred, hr, meta.volume_idx, meta.slice)
            realism.update(pred, hr, lr, meta.volume_idx, meta.slice)
    return {k: {**d.compute(), **r.row()} for k, (d, r) in metrics.items()}


def evaluate(cfg: DictConfig) -> dict:
    model, name, trained = load_model(cfg)
    dm = build_datamodule(cfg)
    dm.setup("test")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    operator = dm.operator
    if trained and trained != operator.name:
        log.warning(
            "the checkpoint was trained on %s LR images, evaluated here on %s ones",
            trained,
            operator.name,
        )
    # a network beside every classical baseline; another baseline beside bicubic
    references = REFERENCES if name == "sr" else tuple(r for r in ("bicubic",) if r != name)
    scored = score(model, dm.test_dataloader(), dm.scale, device, operator.nominal, references)
    info = {"dataset": dm.dataset_name, "scale": dm.scale, "degradation": operator.name}
    rows = [{"method": name, **info, **scored["ours"]}]
    rows += [{"method": ref, **info, **scored[ref]} for ref in references]
    if references:
        best = max(references, key=lambda ref: scored[ref]["psnr"])
        log.info(
            "%s: %+.2f dB PSNR over the best classical baseline for this LR (%s)",
            name,
            scored["ours"]["psnr"] - scored[best]["psnr"],
            best,
        )
    print_table(rows, f"{dm.dataset_name} x{dm.scale} ({dm.operator.name}), test split")
    csv_path, _ = write_results(output_dir(cfg), rows)
    log.info("results written to %s", csv_path)
    return {"score": scored["ours"]["psnr"], "rows": rows}
