"""Stage ``sr``'s GAN phase: the discriminator's own learning rate and betas (``sr.d_lr``,
``sr.d_betas``) and its warm-up (``sr.d_warmup``: D-only steps before the first generator
update, which are not generator updates and are not repeated on resume)."""

from __future__ import annotations

import copy
import logging
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mrsr.building import build_module
from mrsr.losses.gan import d_accuracy
from mrsr.stages.sr import SRModule
from tests.test_sr import SMALL, snapshot, synthetic_loader


def gan_module(make_cfg, *extra: str, loss: str = "gan") -> SRModule:
    """A tiny seeded stage-sr module; ``loss=gan`` is L1 + adversarial (no extractors)."""
    torch.manual_seed(0)
    return build_module(make_cfg("stage=sr", f"loss={loss}", *SMALL, *extra))


def fit(module: SRModule, tmp_path: Path, steps: int, ckpt_path: str | None = None) -> L.Trainer:
    """``steps`` generator updates over as many epochs of the synthetic loader as needed."""
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, train_dataloaders=synthetic_loader(), ckpt_path=ckpt_path)
    return trainer


def group(module: SRModule, name: str) -> dict[str, Any]:
    return next(g for g in module.trainer.optimizers[0].param_groups if g["name"] == name)


def held_out_accuracy(module: SRModule) -> float:
    """D's accuracy, real HR vs G(LR), on batches the training loader does not hold (G in
    training mode as the warm-up and training use it, on a copy: its statistics stay)."""
    generator = copy.deepcopy(module.generator).train()
    with torch.no_grad():
        return statistics.fmean(
            float(
                d_accuracy(
                    module.discriminator(hr), module.discriminator(generator(lr)), module.gan_loss
                )
            )
            for lr, hr, _ in synthetic_loader(seed=1)
        )


def record_first_step(module: SRModule, monkeypatch) -> dict[str, Any]:
    """What the module holds when its first ``training_step`` of a fit begins."""
    seen: dict[str, Any] = {}
    original = module.training_step

    def training_step(batch, batch_idx: int):
        if not seen:
            opt = module.trainer.optimizers[0]
            seen.update(
                global_step=module.global_step,
                epoch=module.lr_schedulers().last_epoch,
                generator=snapshot(module.generator),
                ema=snapshot(module.ema),
                discriminator=snapshot(module.discriminator),
                g_state=[opt.state.get(p) for p in module.generator.parameters()],
                d_steps={
                    int(opt.state[p]["step"])
                    for p in module.discriminator.parameters()
                    if p in opt.state
                },
                accuracy=held_out_accuracy(module),
            )
        return original(batch, batch_idx)

    monkeypatch.setattr(module, "training_step", training_step)
    return seen


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_discriminator_has_its_own_learning_rate_and_betas(make_cfg, tmp_path: Path) -> None:
    module = gan_module(
        make_cfg, "sr.lr=1e-4", "sr.d_lr=4e-4", "sr.d_betas=[0.5,0.99]", "sr.warmup_steps=4"
    )
    assert (module.hparams["d_lr"], module.hparams["d_betas"]) == (4e-4, [0.5, 0.99])
    fit(module, tmp_path, steps=2)
    g, d = group(module, "G"), group(module, "D")
    assert (g["initial_lr"], d["initial_lr"]) == (1e-4, 4e-4)
    assert (g["betas"], d["betas"]) == ((0.9, 0.999), (0.5, 0.99))
    # the schedule (linear warm-up: 3/4 after two updates) multiplies both groups alike
    assert g["lr"] == pytest.approx(0.75e-4) and d["lr"] == pytest.approx(3e-4)


def test_default_discriminator_settings_are_the_generators(make_cfg, tmp_path: Path) -> None:
    """``d_lr: null`` / ``d_betas: null`` (the defaults) train exactly as ``d_lr = lr``,
    ``d_betas = betas`` given explicitly: the same weights, bit for bit."""
    results = []
    for extra in ((), ("sr.d_lr=3e-4", "sr.d_betas=[0.9,0.999]")):
        module = gan_module(make_cfg, "sr.lr=3e-4", "sr.lr_schedule=cosine", *extra)
        assert module.d_lr == 3e-4 and module.d_betas == module.betas and module.d_warmup == 0
        fit(module, tmp_path, steps=3)
        results.append(snapshot(module))
    assert same(*results)


def test_warmup_trains_d_alone_before_the_first_generator_update(
    make_cfg, tmp_path: Path, monkeypatch, caplog
) -> None:
    warmup, steps = 40, 3
    module = gan_module(make_cfg, f"sr.d_warmup={warmup}", "sr.d_lr=3e-3", "sr.lr_schedule=cosine")
    g0, ema0, d0 = snapshot(module.generator), snapshot(module.ema), snapshot(module.discriminator)
    before = held_out_accuracy(module)
    first = record_first_step(module, monkeypatch)
    with caplog.at_level(logging.INFO, logger="mrsr"):
        trainer = fit(module, tmp_path, steps=steps)
    # not generator updates: the budget, the step count and the schedule are the run's own
    assert trainer.global_step == steps and int(module.ema.n_averaged) == steps
    assert first["global_step"] == 0 and first["epoch"] == 0
    # the generator (buffers too), its EMA and its optimiser state are untouched by the warm-up
    assert same(first["generator"], g0) and same(first["ema"], ema0)
    assert all(s is None for s in first["g_state"])
    # D made `warmup` steps of its parameter group, and learned: held-out accuracy went up
    assert not same(first["discriminator"], d0) and first["d_steps"] == {warmup}
    assert first["accuracy"] > before and first["accuracy"] >= 0.9, (before, first["accuracy"])
    assert group(module, "D")["lr"] < 3e-3  # the schedule's rate is back after the warm-up
    assert any(r.getMessage().startswith(f"D warm-up: {warmup} steps") for r in caplog.records)


def test_resumed_run_does_not_warm_up_again(make_cfg, tmp_path: Path, monkeypatch) -> None:
    module = gan_module(make_cfg, "sr.d_warmup=4")
    fit(module, tmp_path, steps=2).save_checkpoint(tmp_path / "cut.ckpt")
    saved = torch.load(tmp_path / "cut.ckpt", map_location="cpu", weights_only=True)
    resumed = gan_module(make_cfg, "sr.d_warmup=4")
    first = record_first_step(resumed, monkeypatch)
    trainer = fit(resumed, tmp_path, steps=4, ckpt_path=str(tmp_path / "cut.ckpt"))
    assert trainer.global_step == 4 and first["global_step"] == 2
    d_saved = {
        k.removeprefix("discriminator."): v
        for k, v in saved["state_dict"].items()
        if k.startswith("discriminator.")
    }
    assert same(first["discriminator"], d_saved)  # D as checkpointed: no second warm-up
    assert first["d_steps"] == {4 + 2}  # its 4 warm-up steps and 2 updates of the first fit


def test_warmup_without_discriminator_does_nothing(make_cfg, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mrsr"):
        module = gan_module(make_cfg, "sr.d_warmup=5", loss="l1")
    assert module.discriminator is None and module.d_warmup == 0
    assert any("nothing to warm up" in r.getMessage() for r in caplog.records)
    assert fit(module, tmp_path, steps=2).global_step == 2


def test_d_accuracy_threshold_per_gan_loss() -> None:
    real, fake = torch.tensor([0.7, 0.2]), torch.tensor([0.3, -1.0])
    assert float(d_accuracy(real, fake, "nsgan")) == 0.5 * (1.0 + 0.5)  # logit 0 is the midpoint
    assert float(d_accuracy(real, fake, "hinge")) == 0.5 * (1.0 + 0.5)
    # targets 1 and 0: midpoint 0.5
    assert float(d_accuracy(real, fake, "lsgan")) == 0.5 * (0.5 + 1.0)


@pytest.mark.slow
def test_kill_and_resume_with_warmup_is_bit_identical(tmp_path: Path) -> None:
    """Through the command line (data module, resumable loader, RNG state): a run with a D
    warm-up killed after its first checkpoint and resumed ends with the uninterrupted run's
    weights (a second warm-up would move D)."""
    from tests.test_resume import check_resume

    check_resume(tmp_path, "sr", "sr.d_warmup=5")
