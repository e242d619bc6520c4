"""The one place checkpoints are read: ``weights_only=True``, metadata checked.

Stage checkpoints carry ``checkpoint["mrsr"] = {"stage", "scale", "version", "config"}``
(written by :class:`mrsr.stages.base.StageModule`). Anything that would need arbitrary
pickled objects to load is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mrsr.errors import CheckpointError


def load_checkpoint(
    path: str | Path, stage: str | None = None, scale: int | None = None
) -> dict[str, Any]:
    """Load a checkpoint safely and check it is from ``stage`` (and ``scale``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "checkpoint not found")
    if path.is_dir():
        raise CheckpointError(path, "is a folder, expected a checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "corrupt or not a PyTorch checkpoint (not a zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                path,
                f"refused: it would import {found[1]} on loading "
                "(only tensors and plain containers are allowed)",
            ) from err
        raise CheckpointError(path, f"corrupt checkpoint ({_detail(err)})") from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise CheckpointError(path, f"corrupt or truncated checkpoint ({_detail(err)})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(path, "not an mrsr checkpoint (no state_dict)")
    meta = ckpt.get("mrsr")
    if not isinstance(meta, dict) or "stage" not in meta:
        raise CheckpointError(path, "not an mrsr checkpoint (no mrsr metadata)")
    if stage is not None and meta["stage"] != stage:
        raise CheckpointError(
            path, f"is a stage-{meta['stage']} checkpoint, expected a stage-{stage} checkpoint"
        )
    if scale is not None and meta.get("scale") is not None and int(meta["scale"]) != int(scale):
        raise CheckpointError(path, f"was trained for scale x{meta['scale']}, expected x{scale}")
    return ckpt


def _detail(err: BaseException) -> str:
    """The informative part of a loading error, on one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [
        ln
        for ln in lines
        if not ln.startswith(("Weights only load failed", "Please file", "Check the doc"))
    ]
    text = (useful or lines or [type(err).__name__])[0]
    return text.removeprefix("WeightsUnpickler error:").strip()[:200] or type(err).__name__


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` under ``prefix.`` with the prefix removed."""
    p = prefix.rstrip(".") + "."
    return {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}
