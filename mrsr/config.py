"""The package's Hydra config (``conf/``, installed as :data:`CONF_PACKAGE`): its folder, the
options of a config group, and the config composed as ``python -m mrsr.run`` composes it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_PACKAGE = "mrsr.conf"


def conf_dir() -> Path:
    """The folder of the package's config files."""
    return Path(str(resources.files(CONF_PACKAGE)))


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (its files, bases ``_x.yaml`` left out); [] for
    a name that is not a group."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("[!_]*.yaml")) if folder.is_dir() else []


def compose(
    overrides: Sequence[str] = (), *, hydra: bool = False, output_dir: str | Path | None = None
) -> DictConfig:
    """The config of ``python -m mrsr.run <overrides>``.

    ``hydra``: with the ``hydra`` node (``return_hydra_config``). ``output_dir``: as a run sees
    it: with the ``hydra`` node, made Hydra's current config (``HydraConfig``), and
    ``paths.output_dir`` set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = hydra_compose(
            config_name="config",
            overrides=list(overrides),
            return_hydra_config=hydra or output_dir is not None,
        )
    if output_dir is not None:
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_option(group: str, option: str) -> DictConfig:
    """Option ``option`` of config group ``group`` as a run composes it (its defaults list
    followed), without the rest of the config: for tables of a group's options, in a third of
    a full composition's time. Options that interpolate other groups need :func:`compose`."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra_compose(config_name=None, overrides=[f"+{group}={option}"])[group]


@functools.cache
def config_orders(group: str) -> dict[str, int]:
    """The ``order`` of each option of config group ``group`` that has one (where a results
    table puts its row), read from the files: an option without its own takes that of a
    same-group option in its ``defaults``, as ``edsr_small`` takes ``edsr``'s."""
    folder = conf_dir() / group
    raw = {p.stem: yaml.safe_load(p.read_text()) or {} for p in folder.glob("*.yaml")}

    def order(name: str) -> int | None:
        node = raw.get(name) or {}
        if "order" in node:
            return int(node["order"])
        parents = [d for d in node.get("defaults") or [] if isinstance(d, str) and d in raw]
        return next((o for o in map(order, parents) if o is not None), None)

    return {name: o for name in group_options(group) if (o := order(name)) is not None}
