"""Trained generators loaded for inference, without the training stage.

:func:`load_trained` reads a stage-``sr`` checkpoint (or an exported one,
``experiments/bundle_model.py``) and returns a :class:`TrainedGenerator`: the network in eval mode
and what inference needs beside it (scale, normalisation percentile, the LR operator it was
trained on, where it came from and the file's sha256). Nothing here imports Lightning or a
LightningModule; :mod:`mrsr.stages.sr` builds its generator with :func:`build_generator` too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrsr.checkpoint import load_checkpoint, sub_state_dict
from mrsr.errors import CheckpointError, ConfigError
from mrsr.labels import name_of, unlabelled

BUNDLED_PREFIX = "quickstart_x"


@dataclass(frozen=True)
class TrainedGenerator:
    """A loaded generator and what inference needs to use and describe it."""

    net: nn.Module
    scale: int
    path: Path
    percentile: float = 99.5  # the per-volume normalisation it was trained with
    training_data: dict[str, Any] = field(default_factory=dict)  # the run's data config
    updates: int = 0
    loss: str | None = None

    @property
    def bundled(self) -> bool:
        """A quick-start model shipped inside the package."""
        return self.path.name.startswith(BUNDLED_PREFIX) and self.path.parent.name == "models"

    @property
    def name(self) -> str:
        """``bundled x2 (quickstart_x2.ckpt)`` or the checkpoint's path."""
        return f"bundled x{self.scale} ({self.path.name})" if self.bundled else str(self.path)

    @property
    def degradation(self) -> str:
        """The name of the LR operator it was trained on (``bicubic`` for older checkpoints)."""
        return str(self.training_data.get("degradation") or "bicubic")

    @property
    def nominal(self) -> str:
        """The deterministic operator closest to its training LR (``bicubic`` or ``kspace``)."""
        return str(self.training_data.get("nominal") or "bicubic")

    @property
    def operator(self) -> dict[str, Any]:
        """The training operator's description (its name only for older checkpoints)."""
        return dict(self.training_data.get("operator") or {"name": self.degradation})

    @property
    def max_training_noise(self) -> float:
        """The largest LR noise level (fraction of the robust maximum) in its training operator."""
        return max_noise(self.operator)

    @cached_property
    def sha256(self) -> str:
        """The checkpoint file's sha256 (hex), read once."""
        return file_sha256(self.path)


def max_noise(operator: dict[str, Any]) -> float:
    """The largest ``noise`` of an operator description (nested mixes included; 0 without)."""
    found = [0.0]
    noise = operator.get("noise")
    if isinstance(noise, list | tuple) and noise:
        found.append(float(max(noise)))
    elif isinstance(noise, int | float):
        found.append(float(noise))
    for part in operator.get("components") or []:
        if isinstance(part, dict):
            found.append(max_noise(part))
    return max(found)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_generator_cfg(model_cfg: Any, where: str) -> None:
    """Only trainable ``mrsr.nets`` networks may be built (also from checkpoint metadata)."""
    target = str(model_cfg.get("_target_", "")) if hasattr(model_cfg, "get") else ""
    if not target.startswith("mrsr.nets."):
        raise ConfigError(f"{where}: model target {target!r} is not an mrsr.nets network")


def build_generator(model_cfg: Any, where: str = "model") -> nn.Module:
    """The network of a ``model`` config (``conf/model``); interpolation baselines are refused."""
    from hydra.utils import instantiate

    check_generator_cfg(model_cfg, where)
    net = instantiate(unlabelled(model_cfg), _convert_="all")
    if not getattr(net, "trainable", False):
        name = str(model_cfg["_target_"]).rsplit(".", 1)[-1]
        raise ConfigError(
            f"{where}={name} is not trainable: "
            "stage=sr needs a network (model=srresnet, edsr, swinir, ...) "
            "(evaluate interpolation baselines with stage=eval model=bicubic)"
        )
    return net


def load_trained(path: str | Path, scale: int | None = None) -> TrainedGenerator:
    """The EMA generator (the raw one when EMA was off) of a stage-``sr`` checkpoint, in eval
    mode, with its scale and training settings. ``scale`` (if given) must match the
    checkpoint's."""
    path = Path(path)
    ckpt = load_checkpoint(path, stage="sr", scale=scale)
    config = ckpt["mrsr"].get("config") or {}
    model_cfg = config.get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(path, "no generator config in the checkpoint metadata")
    try:
        net = build_generator(model_cfg, where=f"{path}")
    except ConfigError as err:
        raise CheckpointError(path, str(err)) from err
    sd = ckpt["state_dict"]
    weights = sub_state_dict(sd, "ema.module") or sub_state_dict(sd, "generator")
    expected = len(net.state_dict())
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(
            path,
            f"generator weights do not match its config ({len(weights)} tensors for "
            f"{expected}: {str(err).splitlines()[0]})",
        ) from err
    data = dict(config.get("data") or {})
    return TrainedGenerator(
        net=net.eval(),
        scale=int(getattr(net, "scale", ckpt["mrsr"].get("scale") or 1)),
        path=path,
        percentile=float(data.get("percentile", 99.5)),
        training_data=data,
        updates=int(ckpt.get("global_step") or 0),
        loss=name_of(config.get("loss")),
    )


def load_generator(path: str | Path, scale: int | None = None) -> nn.Module:
    """Just the network of :func:`load_trained` (eval mode)."""
    return load_trained(path, scale).net


def bundled_model(scale: int) -> Path:
    """The quick-start model for ``scale`` shipped inside the package (model card:
    docs/results/quickstart.md)."""
    from importlib import resources

    from mrsr.data.degrade import check_scale

    path = Path(
        str(
            resources.files("mrsr.assets") / "models" / f"{BUNDLED_PREFIX}{check_scale(scale)}.ckpt"
        )
    )
    if not path.is_file():
        raise ConfigError(
            f"no bundled x{scale} model in this installation ({path}): "
            "pass ckpt=<stage-sr checkpoint>"
        )
    return path


def export_generator(path: str | Path, out: str | Path, **notes: Any) -> Path:
    """Write the evaluation generator of a stage-``sr`` checkpoint as a small checkpoint
    (weights and metadata only, no optimiser or discriminator) that :func:`load_trained` and
    ``stage=predict`` read like any other. ``notes`` are added to the metadata."""
    import io

    from mrsr.files import atomic_write_bytes

    ckpt = load_checkpoint(path, stage="sr")
    sd = ckpt["state_dict"]
    weights = sub_state_dict(sd, "ema.module") or sub_state_dict(sd, "generator")
    meta = {**ckpt["mrsr"], "exported_from": Path(path).name, **notes}
    buf = io.BytesIO()
    torch.save(
        {
            "state_dict": {
                f"generator.{k}": v.detach().contiguous().clone() for k, v in weights.items()
            },
            "mrsr": meta,
        },
        buf,
    )
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def model_for(ckpt: object, scale: int) -> TrainedGenerator:
    """The model ``ckpt`` names, or the bundled one of ``scale`` when ``ckpt`` is empty."""
    return load_trained(bundled_model(scale) if ckpt in (None, "") else Path(str(ckpt)))
