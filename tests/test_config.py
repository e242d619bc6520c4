"""The composed config is what runs: each stage's module, trainer lengths and loader sizes are
keys of the config (``--cfg job``), overriding one is honoured, and nothing else decides them."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mrsr.building import build_datamodule, build_module, build_trainer
from mrsr.callbacks import LastCheckpoint, ProgressBar, RngState, SameRunDir
from mrsr.data.resumable import ResumableLoader
from mrsr.training import train_stage

TINY = {
    "vit": [
        "vit.hidden_size=16",
        "vit.mlp_dim=32",
        "vit.num_layers=1",
        "vit.num_heads=2",
        "vit.img_size=32",
        "vit.patch_size=8",
        "vit.batch_size=4",
        "vit.train_crop=32",
    ],
    "disent": [
        "disent.img_size=32",
        "disent.enc_channels=[4,4,4,4]",
        "disent.texture_dim=8",
        "disent.disc_channels=4",
        "disent.batch_size=4",
        "disent.train_crop=32",
    ],
    "sr": ["model.n_blocks=1", "model.n_feats=8", "sr.batch_size=4", "sr.train_crop=32"],
}
QUIET = [
    "~logger",
    "~callbacks.progress_bar",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


@pytest.mark.parametrize("stage", ["vit", "disent", "sr"])
def test_trainer_max_steps_override_stops_there(make_cfg, stage: str) -> None:
    """``trainer.max_steps=N`` is the run's length, whatever the stage's recipe says (stage
    ``disent`` counts its G and D steps: two per batch)."""
    cfg = make_cfg(
        f"stage={stage}",
        *TINY[stage],
        *QUIET,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    )
    assert int(cfg[stage].max_steps) != 4  # the recipe's own length is another
    result = train_stage(cfg)
    ckpt = torch.load(Path(result["last"]), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4


def _resolved(cfg, key: str):
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)


@pytest.mark.parametrize(
    "stage,extra",
    [
        ("vit", []),
        ("disent", ["disent.lr_views=true"]),
        ("sr", ["loss=l1"]),
        ("sr", ["experiment=paper_ixi_t1", "data=demo", "loss=l1"]),
    ],
)
def test_composed_config_is_what_the_trainer_data_and_module_receive(
    make_cfg, stage: str, extra: list[str]
) -> None:
    cfg = make_cfg(f"stage={stage}", *extra, *TINY[stage], "data.eval_batch_size=3")
    trainer_cfg, data_cfg = _resolved(cfg, "trainer"), _resolved(cfg, "data")
    module_cfg = _resolved(cfg, "stage.module")
    recipe = cfg[stage]
    # the stage's YAML routes the recipe's lengths and sizes into trainer.* and data.*
    assert (
        trainer_cfg["max_steps"] == recipe.max_steps
        and trainer_cfg["max_epochs"] == recipe.max_epochs
    )
    assert trainer_cfg["val_check_interval"] == recipe.val_check_interval
    assert (
        data_cfg["batch_size"] == recipe.batch_size and data_cfg["patch_size"] == recipe.train_crop
    )

    dm = build_datamodule(cfg)
    assert (dm.batch_size, dm.patch_size, dm.eval_batch_size) == (
        data_cfg["batch_size"],
        data_cfg["patch_size"],
        3,
    )
    trainer = build_trainer(cfg)
    assert trainer.max_steps == trainer_cfg["max_steps"]
    assert trainer.max_epochs == (
        None if trainer_cfg["max_epochs"] is None else trainer_cfg["max_epochs"]
    )
    assert trainer.val_check_interval == trainer_cfg["val_check_interval"]
    assert trainer.check_val_every_n_epoch == trainer_cfg["check_val_every_n_epoch"]
    assert trainer.check_val_every_n_epoch == (
        None if isinstance(recipe.val_check_interval, int) else 1
    )
    dm.setup("fit")
    module = build_module(cfg)
    if stage == "vit":  # sized from the data module's classes when training starts
        module.build_net(dm.classes)
    hparams = dict(module.hparams)
    for key in (
        "lr",
        "nan_policy",
        "train_crop",
        "mim_weight",
        "weight_decay",
        "betas",
        "ema_decay",
        "lr_schedule",
        "warmup_steps",
        "weights",
        "lr_views",
        "r1_every",
    ):
        if key in module_cfg:
            assert hparams[key] == module_cfg[key], key
    if stage == "sr":
        assert (
            hparams["generator"] == module_cfg["generator"]
            and hparams["loss"] == module_cfg["loss"]
        )
        assert module.lr == module_cfg["lr"] and module.ema_decay == module_cfg["ema_decay"]
        assert (
            type(module.generator).__name__
            == module_cfg["generator"]["_target_"].rsplit(".", 1)[-1]
        )
    if stage == "vit":
        assert (
            module.net.hidden_size == module_cfg["net"]["hidden_size"]
            and module.classes == dm.classes
        )
    if stage == "disent":
        assert (
            module.lr_views
            and module.scale == cfg.scale
            and module.degradation == cfg.data.degradation
        )


def test_cfg_job_on_the_command_line_shows_overrides_where_they_act() -> None:
    """``--cfg job --resolve`` prints the values a run receives, overrides included."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrsr.run",
            "stage=sr",
            "trainer.max_steps=5",
            "data.batch_size=3",
            "stage.module.lr=0.25",
            "--cfg",
            "job",
            "--resolve",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = yaml.safe_load(out)
    assert shown["trainer"]["max_steps"] == 5 and shown["data"]["batch_size"] == 3
    assert shown["stage"]["module"]["lr"] == 0.25 and shown["sr"]["lr"] != 0.25
    assert shown["stage"]["module"]["_target_"] == "mrsr.stages.sr.SRModule"
    assert shown["trainer"]["max_epochs"] == shown["sr"]["max_epochs"]


def test_pipeline_stage_config_is_what_the_stage_composes(make_cfg, tmp_path: Path) -> None:
    from mrsr.tasks.pipeline import stage_config

    overrides = ["vit.max_steps=7", "disent.batch_size=5", "sr.lr=0.125", "loss=l1"]
    pipe = make_cfg("stage=pipeline", *overrides)
    for stage in ("vit", "disent", "sr"):
        alone = make_cfg(f"stage={stage}", *overrides)
        sub = stage_config(pipe, stage, tmp_path / stage)
        for key in ("stage", "trainer", "data"):
            a, b = _resolved(sub, key), _resolved(alone, key)
            a.pop("default_root_dir", None), b.pop("default_root_dir", None)
            assert a == b, (stage, key)
        assert sub.paths.output_dir == str(tmp_path / stage)


def test_pipeline_refuses_lengths_that_are_per_stage(make_cfg, tmp_path: Path) -> None:
    from mrsr.errors import ConfigError
    from mrsr.tasks.pipeline import stage_config

    for extra, hint in (
        ("+trainer.max_steps=5", "vit.max_steps"),
        ("+data.patch_size=64", "sr.train_crop"),
    ):
        with pytest.raises(ConfigError, match=hint):
            stage_config(make_cfg("stage=pipeline", extra), "vit", tmp_path)


def test_recorded_training_crop_is_the_one_the_data_used(make_cfg) -> None:
    for stage in ("vit", "disent"):
        cfg = make_cfg(f"stage={stage}", "data.patch_size=64")
        assert (
            _resolved(cfg, "stage.module")["train_crop"] == 64 == build_datamodule(cfg).patch_size
        )


def test_throughplane_module_takes_the_sr_extractors_and_start(make_cfg) -> None:
    cfg = make_cfg(
        "stage=throughplane",
        "input=a.nii.gz",
        "output=b.nii.gz",
        "loss=vit",
        "sr.vit_ckpt=/x/vit.ckpt",
        "sr.init_from=/x/sr.ckpt",
        "trainer.max_steps=5",
    )
    module = _resolved(cfg, "stage.module")
    assert module["vit_extractor"]["path"] == "/x/vit.ckpt" and module["init_from"] == "/x/sr.ckpt"
    assert module["generator"]["scale"] == module["scale"] == 1 and cfg.trainer.max_steps == 5


def test_callbacks_come_from_their_group_only(make_cfg) -> None:
    kinds = {type(c) for c in build_trainer(make_cfg("~logger")).callbacks}
    assert {RngState, SameRunDir, LastCheckpoint, ProgressBar} <= kinds
    none = build_trainer(make_cfg("callbacks=none", "~logger")).callbacks
    assert not any(
        isinstance(c, RngState | SameRunDir | LastCheckpoint | ProgressBar) for c in none
    )
    kinds = {type(c) for c in build_trainer(make_cfg("~logger", "~callbacks.rng_state")).callbacks}
    assert RngState not in kinds and LastCheckpoint in kinds


def test_training_loader_is_the_data_modules_resumable_one(make_cfg) -> None:
    dm = build_datamodule(make_cfg("stage=sr", "data.batch_size=4", "data.patch_size=32"))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and loader.batch_size == 4
    first = next(iter(loader))
    again = next(iter(dm.train_dataloader()))  # same (seed, epoch): same patches
    assert torch.equal(first.hr, again.hr) and first.hr.shape[-1] == 32
    loader.load_state_dict({"epoch": 0, "start": 4})
    assert torch.equal(next(iter(loader)).hr[0], list(iter(dm.train_dataloader()))[1].hr[0])


def test_progress_bar_shows_steps_when_epochs_are_unbounded() -> None:
    class Trainer:
        max_epochs, max_steps, global_step = -1, 700, 42

    bar = ProgressBar()
    bar._trainer = Trainer()
    assert bar._get_train_description(31).strip() == "step 42/700"
    Trainer.max_epochs = 5
    assert bar._get_train_description(3).strip() == "Epoch 3/4"


def test_lightning_log_lines_are_printed_once() -> None:
    from mrsr.dispatch import log_once

    root, seen = logging.getLogger(), []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    import lightning.pytorch  # noqa: F401 - adds its own console handler

    handler = Collect()
    root.addHandler(handler)
    try:
        log_once()
        stream = [
            h
            for n in ("lightning", "lightning.pytorch")
            for h in logging.getLogger(n).handlers
            if type(h) is logging.StreamHandler
        ]
        assert not stream
        logging.getLogger("lightning.pytorch").warning("hello once")
        assert seen.count("hello once") == 1
    finally:
        root.removeHandler(handler)


def test_nets_do_not_depend_on_data() -> None:
    code = (
        "import sys, pkgutil, importlib, mrsr.nets as n\n"
        "[importlib.import_module(f'mrsr.nets.{m.name}') "
        "for m in pkgutil.iter_modules(n.__path__)]\n"
        "bad = [m for m in sys.modules if m.startswith('mrsr.data')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("group", ["loss", "model"])
def test_every_preset_and_network_names_itself_and_has_a_label(make_cfg, group: str) -> None:
    """Labels live in the config files (no mirrored registry); the report orders every one."""
    from mrsr.config import config_orders
    from mrsr.run import group_options

    for option in group_options(group):
        node = make_cfg(f"{group}={option}")[group]
        assert node.name == option and node.label, option
        family = option.removesuffix("_small")
        if group == "loss" or (family != "srresnet" and "Interpolation" not in node._target_):
            assert option in config_orders(group), f"give conf/{group}/{option}.yaml an order:"
            assert node.order == config_orders(group)[option]  # as composed
