"""``stage=vit|disent|sr``: one training task for the three stages.

The composed config says what runs (``python -m mrsr.run stage=sr --cfg job --resolve``):
``data`` is the data module, ``stage.module`` the LightningModule, ``trainer`` the Trainer
with ``callbacks`` and ``logger``; :func:`mrsr.training.train_stage` instantiates them, fits,
tests the best checkpoint and writes the run's records in ``paths.output_dir``:
``results.csv`` / ``results.json`` (stage ``sr``: the test rows) and ``FINISHED.json`` (best
and last checkpoint, test metrics), which the pipeline uses to hand checkpoints on and to skip
finished stages.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mrsr.training import train_stage


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.stage.name`` in ``paths.output_dir`` (:func:`mrsr.training.train_stage`)."""
    return train_stage(cfg)
