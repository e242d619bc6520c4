"""The comparison protocol of stage ``sr``: equal generator budgets for every preset, validation
at the last step, the data-consistency objective, ``sr.init_from`` and the two-phase split."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch

from mrsr.building import build_module
from mrsr.data.degrade import crop_to_multiple, degrade, normalise_volume
from mrsr.data.sources import demo_dir
from mrsr.errors import CheckpointError, ConfigError
from mrsr.losses.objective import SRObjective
from mrsr.losses.terms import spatial_cosine_distance
from mrsr.ops import upsample
from mrsr.stages import sr as sr_stage
from mrsr.tasks.pipeline import split_budget, two_phase
from tests.test_sr import SMALL, TinyDisent, TinyViT, synthetic_loader

PRESETS = ("l1", "paired", "paper", "paper_dc", "spatial", "gan", "gan_feat")


def _trainer(tmp_path: Path, steps: int, val_every: int | None = None, callbacks=()) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        val_check_interval=val_every,
        check_val_every_n_epoch=None if val_every else 1,
        limit_val_batches=1 if val_every else 0,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )


def _module(make_cfg, preset: str, *extra: str) -> sr_stage.SRModule:
    cfg = make_cfg("stage=sr", f"loss={preset}", *SMALL, *extra)
    return build_module(cfg, vit_extractor=TinyViT(), disent_extractor=TinyDisent())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_makes_the_same_generator_updates(
    preset: str, make_cfg, tmp_path: Path
) -> None:
    module = _module(make_cfg, preset)
    trainer = _trainer(tmp_path, steps=5)
    trainer.fit(module, train_dataloaders=synthetic_loader(n=8, batch=2))  # 4 batches per epoch
    batches = trainer.fit_loop.epoch_loop.batch_progress.total.completed
    assert trainer.global_step == 5 and batches == 5  # one step per batch, with or without D
    assert int(module.ema.n_averaged) == 5  # 5 generator updates
    assert len(trainer.optimizers) == 1
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == (["G", "D"] if module.use_d else ["G"])


def test_validation_runs_at_the_last_step(make_cfg, tmp_path: Path) -> None:
    seen: list[int] = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            seen.append(trainer.global_step)

    module = _module(make_cfg, "paired")
    trainer = _trainer(tmp_path, steps=7, val_every=3, callbacks=[Record()])
    trainer.fit(
        module,
        train_dataloaders=synthetic_loader(n=8, batch=2),
        val_dataloaders=synthetic_loader(n=2, batch=2),
    )
    assert seen == [3, 6, 7]  # 7 is not a multiple of 3: validated because it is the last step
    seen.clear()
    trainer = _trainer(tmp_path, steps=6, val_every=3, callbacks=[Record()])
    trainer.fit(
        _module(make_cfg, "l1"),
        train_dataloaders=synthetic_loader(n=8, batch=2),
        val_dataloaders=synthetic_loader(n=2, batch=2),
    )
    assert seen == [3, 6]  # once, not twice, when the last step is a validation step anyway


def _real_slice(scale: int) -> torch.Tensor:
    vol = normalise_volume(
        np.asarray(nib.load(demo_dir() / "seg3d_T1.nii.gz").dataobj, dtype=np.float32)
    )
    hr = torch.from_numpy(np.ascontiguousarray(vol[:, :, vol.shape[2] // 2]))[None, None]
    return crop_to_multiple(hr, scale)


@pytest.mark.parametrize("degradation", ["bicubic", "kspace"])
def test_data_consistency_is_minimised_by_the_true_hr_not_the_interpolated_lr(
    degradation: str, make_cfg
) -> None:
    from omegaconf import OmegaConf

    scale = 2
    hr = _real_slice(scale)
    lr = degrade(hr, scale, degradation)  # what the data module feeds the network
    no_adv = lambda x: x.sum() * 0  # noqa: E731 - the adversarial term is not what is tested
    torch.manual_seed(0)
    vit, dis = TinyViT(), TinyDisent()
    for preset in ("paper_dc", "paper"):
        loss = OmegaConf.to_container(make_cfg(f"loss={preset}").loss, resolve=True)
        for k in ("vit", "str"):  # spatial features for paper_dc, pooled for paper
            loss["terms"][k]["spatial"] = preset == "paper_dc"
        objective = SRObjective(loss, scale, degradation, vit, dis)
        at_hr = objective.terms(lr, hr, hr.clone(), no_adv)
        at_interp = objective.terms(lr, hr, upsample(lr, scale), no_adv)
        at_hr.pop("adv"), at_interp.pop("adv")
        if preset == "paper_dc":
            assert set(at_hr) == {"pixel", "vit", "str", "tex"}
            assert all(float(v) < 1e-5 for v in at_hr.values()), at_hr  # D(HR) = LR: every term ~0
            assert float(at_hr["pixel"]) < 1e-7
            # the interpolated LR is not a minimum: the pixel and the spatial terms see it
            assert all(
                float(at_interp[k]) > 10 * float(at_hr[k]) + 1e-6 for k in ("pixel", "vit", "str")
            ), at_interp
            # a pooled vector barely moves
            assert float(at_interp["tex"]) >= float(at_hr["tex"]) - 1e-6
        else:  # the literal paper compares f(SR) with f(LR): the true HR is not a minimum
            assert sum(float(v) for v in at_hr.values()) > 1e-4


def test_spatial_distance_is_per_location() -> None:
    a = torch.randn(2, 8, 4, 4)
    b = a.clone()
    b[:, :, 0, 0] *= -1  # one location flipped: cos = -1 there, 1 elsewhere
    assert spatial_cosine_distance(a, b).item() == pytest.approx(2 / 16, abs=1e-6)
    # scale-free per location
    assert spatial_cosine_distance(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)


def weight(loss: dict, term: str) -> float:
    """A term's configured weight in a loss preset."""
    return float(loss["terms"][term]["weight"])


def _spatial_objective(make_cfg):
    """The ``spatial`` preset's objective and its terms at the interpolated LR of a batch."""
    from omegaconf import OmegaConf

    loss = OmegaConf.to_container(make_cfg("loss=spatial").loss, resolve=True)
    objective = SRObjective(loss, 2, "bicubic", TinyViT(), TinyDisent())
    lr, hr, _ = next(iter(synthetic_loader()))
    sr = upsample(lr, 2).requires_grad_(True)
    return loss, objective, hr, sr, objective.terms(lr, hr, sr, lambda x: x.mean() * 0)


def test_normalise_sets_weights_from_gradient_norms(make_cfg) -> None:
    loss, objective, hr, sr, terms = _spatial_objective(make_cfg)
    scales = objective.calibrate(sr, hr, terms)
    assert set(scales) == {"vit", "str", "tex"} and bool(objective.calibrated)
    w = objective.effective_weights()

    def gnorm(t: torch.Tensor) -> float:
        return torch.autograd.grad(t, sr, retain_graph=True)[0].norm().item()

    ref = gnorm(torch.nn.functional.l1_loss(sr, hr))
    for k in (
        "vit",
        "str",
        "tex",
    ):  # weighted gradient norm = configured weight x the L1 gradient norm
        if k != "tex" or scales[k] < 1e4:  # (z_t of the tiny test encoder may hardly move: capped)
            assert w[k] * gnorm(terms[k]) == pytest.approx(weight(loss, k) * ref, rel=1e-4)
    assert w["pixel"] == weight(loss, "pixel") and objective.calibrate(sr, hr, terms) == {}


def test_init_from_loads_the_generator_and_nothing_else(make_cfg, tmp_path: Path) -> None:
    source = _module(make_cfg, "paired")
    trainer = _trainer(tmp_path, steps=3)
    trainer.fit(source, train_dataloaders=synthetic_loader(n=8, batch=2))
    ckpt = tmp_path / "source.ckpt"
    trainer.save_checkpoint(ckpt)
    target = _module(make_cfg, "paired", f"sr.init_from={ckpt}")
    ema = source.ema.module.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in target.generator.state_dict().items())
    assert all(torch.equal(v, ema[k]) for k, v in target.ema.module.state_dict().items())
    assert int(target.ema.n_averaged) == 0 and target.global_step == 0
    d_src, d_new = source.discriminator.state_dict(), target.discriminator.state_dict()
    assert any(not torch.equal(v, d_src[k]) for k, v in d_new.items())  # D starts afresh
    with pytest.raises(CheckpointError, match="another layout") as err:
        _module(make_cfg, "paired", f"sr.init_from={ckpt}", "model.n_feats=12")
    assert "\n" not in str(err.value)


def test_pipeline_and_plain_l1_have_equal_generator_budgets(make_cfg) -> None:
    cfg = make_cfg("stage=pipeline", "loss=paired")  # the default experiment
    assert two_phase(cfg) and not two_phase(make_cfg("stage=pipeline", "loss=l1"))
    first, rest = split_budget(cfg)
    l1 = make_cfg("stage=sr", "loss=l1")
    assert first["max_steps"] + rest["max_steps"] == int(l1.sr.max_steps) == int(cfg.sr.max_steps)
    assert first["max_steps"] == round(
        float(cfg.pipeline.pretrain_fraction) * int(cfg.sr.max_steps)
    )
    epochs = split_budget(
        make_cfg("stage=pipeline", "loss=paper", "sr.max_steps=-1", "sr.max_epochs=10")
    )
    assert epochs == ({"max_epochs": 5}, {"max_epochs": 5})
    assert not two_phase(make_cfg("stage=pipeline", "loss=paper", "pipeline.pretrain_fraction=0"))
    with pytest.raises(ConfigError, match="pretrain_fraction"):
        split_budget(make_cfg("stage=pipeline", "loss=paper", "pipeline.pretrain_fraction=1.5"))


def test_every_table_row_states_its_budget() -> None:
    """From the row alone (the run's own record): a start from another generator is named."""
    from mrsr.report.tables import budget

    assert (
        budget({"updates": 350, "start_updates": 350, "start_loss": "l1_phase"})
        == "700 updates (350 L1 + 350 fine-tuning)"
    )
    assert (
        budget({"updates": 400, "start_updates": 1000, "start_loss": "gan"})
        == "1400 updates (1000 gan + 400 fine-tuning)"
    )
    assert (
        budget({"updates": 700, "start_updates": 0, "start_loss": None})
        == "700 updates (one phase)"
    )
    assert budget({}) == "—"


@pytest.mark.parametrize("target", ["hr", "lr", "dc"])
@pytest.mark.parametrize("mode", ["pooled", "spatial"])
def test_every_target_works_with_extractors_at_their_trained_scale(target: str, mode: str) -> None:
    """SR (HR grid) and LR-grid images are compared at one physical scale, so their features
    have equal shapes for every target; gradients reach the SR image."""
    from mrsr.extractors import DisentExtractor, ViTExtractor
    from mrsr.nets.swapae import StructureTextureEncoder
    from mrsr.nets.vit import SliceViT

    torch.manual_seed(0)
    vit = ViTExtractor(
        SliceViT(
            img_size=32,
            patch_size=8,
            hidden_size=16,
            mlp_dim=32,
            num_layers=1,
            num_heads=2,
            num_classes=2,
        ),
        pixel_scale=32 / 48,
    )
    dis = DisentExtractor(
        StructureTextureEncoder(
            img_size=32, enc_channels=[4, 4, 4, 4], structure_channels=2, texture_dim=8
        ),
        pixel_scale=32 / 64,
    )
    spatial, terms = mode == "spatial", "mrsr.losses.terms."
    loss = {
        "terms": {
            "pixel": {"_target_": terms + "PixelTerm", "target": "dc" if target == "dc" else "hr"},
            "vit": {"_target_": terms + "ViTTerm", "target": target, "spatial": spatial},
            "str": {"_target_": terms + "StructureTerm", "target": target, "spatial": spatial},
            "tex": {"_target_": terms + "TextureTerm", "target": target},
        }
    }
    objective = SRObjective(loss, 2, "bicubic", vit, dis)
    hr = torch.rand(2, 1, 48, 48)
    lr = degrade(hr, 2, "bicubic")
    sr = upsample(lr, 2).requires_grad_(True)
    terms = objective.terms(lr, hr, sr)
    assert set(terms) == {"pixel", "vit", "str", "tex"} and all(
        torch.isfinite(v) for v in terms.values()
    )
    objective.total(terms).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0


def test_calibration_waits_for_finite_gradients(make_cfg) -> None:
    loss, objective, hr, sr, terms = _spatial_objective(make_cfg)
    bad = {**terms, "vit": terms["vit"] * float("nan")}
    assert objective.calibrate(sr, hr, bad) == {} and not bool(objective.calibrated)
    assert objective.effective_weights()["vit"] == weight(loss, "vit")  # unscaled until then
    assert objective.calibrate(sr, hr, terms) and bool(objective.calibrated)


def test_resume_of_older_checkpoints(make_cfg, tmp_path: Path) -> None:
    """A 0.3 L1 checkpoint (no objective buffers) resumes; a 0.3 GAN checkpoint (two optimiser
    states) is refused in one line before any work."""
    from mrsr.training import resolve_resume

    module = _module(make_cfg, "l1")
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(module, train_dataloaders=synthetic_loader(n=8, batch=2))
    ckpt = tmp_path / "old.ckpt"
    trainer.save_checkpoint(ckpt)
    old = torch.load(ckpt, weights_only=True)
    for k in [k for k in old["state_dict"] if k.startswith("objective.")]:
        del old["state_dict"][k]
    torch.save(old, ckpt)
    resumed = _module(make_cfg, "l1")
    trainer = _trainer(tmp_path, steps=4)
    trainer.fit(
        resumed,
        train_dataloaders=synthetic_loader(n=8, batch=2),
        ckpt_path=str(ckpt),
        weights_only=True,
    )
    assert trainer.global_step == 4 and bool(resumed.objective.calibrated)
    old["optimizer_states"] = old["optimizer_states"] * 2
    torch.save(old, ckpt)
    cfg = make_cfg("stage=sr", f"ckpt_path={ckpt}")
    with pytest.raises(CheckpointError, match="two optimisers") as err:
        resolve_resume(cfg, tmp_path, "sr")
    assert "\n" not in str(err.value)


def test_objective_loads_state_without_its_buffers(make_cfg) -> None:
    """Any loader (not only Lightning's) accepts a 0.3 state without the objective's buffers."""
    loss, objective, *_ = _spatial_objective(make_cfg)
    objective.load_state_dict({})  # strict: the missing buffers are filled in, not reported
    # normalise set
    assert torch.equal(objective.term_scale, torch.ones(5)) and not bool(objective.calibrated)
