"""What a run is called: ``name:``, ``label:`` and ``order:`` of a loss preset or a network config.

Each file of ``conf/loss`` and ``conf/model`` names itself (``name``, the option name), says
how a results table shows it (``label``) and, for the loss presets and the comparison networks,
where its row goes (``order``, read by :func:`mrsr.config.config_orders`). Name and label travel
with the config into the module, so a run is labelled by its own arguments; the keys are taken
off before a network is instantiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LABEL_KEYS = ("name", "label", "order")


def unlabelled(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without its :data:`LABEL_KEYS` (what the network's constructor receives)."""
    return {k: v for k, v in cfg.items() if k not in LABEL_KEYS}


def name_of(cfg: Mapping[str, Any] | None) -> str | None:
    """The option name of a loss preset or network config (None for a config without one)."""
    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    return None if name is None else str(name)


def label_of(cfg: Mapping[str, Any] | None) -> str | None:
    """The table label of a loss preset or network config, else its name."""
    label = cfg.get("label") if isinstance(cfg, Mapping) else None
    return str(label) if label is not None else name_of(cfg)


# The loss name of the L1 phase of a two-phase pipeline run: its own run, not a preset of the
# tables.
L1_PHASE = "l1_phase"
