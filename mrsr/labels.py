"""What a run is called: ``name:``, ``label:`` and ``order:`` of a loss preset or a network config.

Each file of ``conf/loss`` and ``conf/model`` names itself (``name``, the option name), says
how a results table shows it (``label``) and, for the loss presets and the comparison networks,
where its row goes (``order``). The keys travel with the config into the module, so a run is
labelled by its own arguments; they are taken off before a network is instantiated.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

LABEL_KEYS = ("name", "label", "order")


def unlabelled(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` without its ``name`` and ``label`` (what the network's constructor receives)."""
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


@functools.cache
def config_orders(group: str) -> dict[str, int]:
    """The ``order`` of each option of config group ``group`` that has one, read from the
    packaged config files (an option without its own takes that of a same-group option in its
    ``defaults``, as ``edsr_small`` takes ``edsr``'s)."""
    folder = resources.files("mrsr.conf").joinpath(group)
    raw = {
        p.name.removesuffix(".yaml"): yaml.safe_load(p.read_text()) or {}
        for p in folder.iterdir()
        if p.name.endswith(".yaml")
    }

    def order(name: str) -> int | None:
        node = raw.get(name) or {}
        if "order" in node:
            return int(node["order"])
        parents = [d for d in node.get("defaults") or [] if isinstance(d, str) and d in raw]
        return next((o for o in map(order, parents) if o is not None), None)

    return {name: o for name in sorted(raw) if (o := order(name)) is not None}
