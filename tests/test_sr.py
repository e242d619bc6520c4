"""Stage ``sr``: networks, losses, one GAN step, every loss preset, a short real training,
and loading generators from checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mrsr import generators
from mrsr.building import build_module
from mrsr.checkpoint import sub_state_dict
from mrsr.data.types import Sample, SliceMeta
from mrsr.errors import CheckpointError, ConfigError
from mrsr.losses.feature import FeatureLoss, cosine_distance
from mrsr.losses.gan import d_loss, g_loss
from mrsr.nets.discriminator import SRGANDiscriminator
from mrsr.nets.srresnet import SRResNet
from mrsr.run import group_options

PRESETS = tuple(group_options("loss"))  # every file of conf/loss
SMALL = (
    "model=srresnet_small",
    "model.n_blocks=1",
    "model.n_feats=8",
    "sr.discriminator.base_channels=4",
    "sr.discriminator.n_layers=2",
    "sr.ema_decay=0.9",
)


class TinyViT(nn.Module):
    """Resizes to 16x16 and returns (pooled (N, 8), map (N, 8, 16, 16)), like the stage-vit
    extractor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tanh(self.conv(F.interpolate(x, size=(16, 16), mode="bilinear")))
        return m.mean((2, 3)), m


class TinyDisent(nn.Module):
    """Returns (z_s (N, 4, 8, 8), z_t (N, 6)) after resizing to 16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(4)  # its running stats must not move (eval mode)
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_s = torch.relu(self.bn(self.conv(F.interpolate(x, size=(16, 16), mode="bilinear"))))
        return z_s, self.fc(z_s.mean((2, 3)))


class DM:
    dataset_name = "synthetic"
    scale = 2


def synthetic_loader(
    n: int = 8, size: int = 16, scale: int = 2, batch: int = 4, seed: int = 0
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        hr = torch.rand(1, size, size, generator=g)
        lr = F.avg_pool2d(hr[None], scale)[0]
        items.append(Sample(lr, hr, SliceMeta("v", 0, i, "T1", 0)))
    return DataLoader(items, batch_size=batch)


def fit(module: L.LightningModule, tmp_path: Path, steps: int = 1) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, train_dataloaders=synthetic_loader())
    return trainer


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# -- networks and losses -------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("hw", [(8, 8), (7, 11), (13, 5)])
def test_generator_shapes(scale: int, hw: tuple[int, int]) -> None:
    g = SRResNet(scale, n_blocks=2, n_feats=8).eval()
    assert g(torch.rand(2, 1, *hw)).shape == (2, 1, hw[0] * scale, hw[1] * scale)
    g = SRResNet(scale, n_blocks=1, n_feats=8, batch_norm=False, residual_bicubic=True).eval()
    assert g(torch.rand(1, 1, *hw)).shape == (1, 1, hw[0] * scale, hw[1] * scale)


def test_generator_layout_and_bad_scale() -> None:
    g = SRResNet(4, n_blocks=3, n_feats=8)
    assert len(g.body) == 3
    assert sum(isinstance(m, nn.PixelShuffle) for m in g.modules()) == 2
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    with pytest.raises(ConfigError):
        SRResNet(3)


@pytest.mark.parametrize("size", [5, 16, 33])
def test_discriminator_any_size(size: int) -> None:
    d = SRGANDiscriminator(1, base_channels=4, n_layers=3)
    assert d(torch.rand(3, 1, size, size)).shape == (3,)


def test_gan_losses_values() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = F.softplus
    assert torch.isclose(d_loss(real, fake, "nsgan"), sp(-real).mean() + sp(fake).mean())
    assert torch.isclose(g_loss(fake, "nsgan"), -torch.log(torch.sigmoid(fake)).mean())
    assert torch.isclose(
        d_loss(real, fake, "lsgan"), torch.tensor(((1**2 + 2**2) + (0.25 + 9)) / 2)
    )
    assert torch.isclose(d_loss(real, fake, "hinge"), torch.tensor((0 + 2) / 2 + (1.5 + 0) / 2))
    assert torch.isclose(g_loss(fake, "hinge"), torch.tensor(1.25))


def test_cosine_distance_and_feature_loss_frozen() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    assert torch.isclose(cosine_distance(a, b), torch.tensor(0.5))  # (1 - 0 + 1 - 1) / 2
    assert torch.isclose(cosine_distance(a, -a), torch.tensor(2.0))
    ext = TinyDisent()
    loss = FeatureLoss(ext)
    loss.train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    x = torch.rand(2, 1, 20, 20, requires_grad=True)
    before = snapshot(ext)
    d_s, d_t = loss(x, torch.rand(2, 1, 10, 10))  # different sizes: the extractor resizes
    (d_s + d_t).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in ext.state_dict().items())


# -- the Lightning module ------------------------------------------------------------------


def test_one_gan_step_updates_g_and_d_not_extractors(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("stage=sr", "loss=paired", *SMALL)
    vit, dis = TinyViT(), TinyDisent()
    module = build_module(cfg, vit_extractor=vit, disent_extractor=dis)
    assert module.use_d and set(module.objective._features) == {"vit", "disent"}
    g0, d0, v0, s0 = (
        snapshot(module.generator),
        snapshot(module.discriminator),
        snapshot(vit),
        snapshot(dis),
    )
    fit(module, tmp_path)
    changed = lambda before, m: any(  # noqa: E731
        not torch.equal(before[k], v) for k, v in m.state_dict().items()
    )
    assert changed(g0, module.generator) and changed(d0, module.discriminator)
    assert not changed(v0, vit) and not changed(s0, dis)
    assert all(p.grad is None for p in list(vit.parameters()) + list(dis.parameters()))
    grads = [p.grad for p in module.generator.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    # frozen after the G step
    assert not any(p.requires_grad for p in module.discriminator.parameters())
    # the extractors are neither optimised nor saved
    opt_params = {
        id(p) for opt in module.trainer.optimizers for g in opt.param_groups for p in g["params"]
    }
    assert not opt_params & {id(p) for p in list(vit.parameters()) + list(dis.parameters())}
    assert not any("_features" in k or "extractor" in k for k in module.state_dict())
    # the EMA copy moved towards G and is what evaluation uses
    assert module.eval_generator is module.ema.module
    assert int(module.ema.n_averaged) == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_each_loss_preset_builds_and_steps(preset: str, make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("stage=sr", f"loss={preset}", *SMALL)
    module = build_module(cfg, vit_extractor=TinyViT(), disent_extractor=TinyDisent())
    w = module.weights  # the terms with a weight > 0
    assert module.use_d == (w.get("adv", 0) > 0)
    assert ("vit" in module.objective._features) == (w.get("vit", 0) > 0)
    assert ("disent" in module.objective._features) == (w.get("str", 0) > 0 or w.get("tex", 0) > 0)
    if preset == "paper":
        assert w == {"adv": 1.0, "vit": 1.0, "str": 1.0, "tex": 0.9} and all(
            module.objective.loss_terms[k].target == "lr" for k in ("vit", "str", "tex")
        )
    if preset == "l1":
        assert module.discriminator is None and not module.objective._features
    g0 = snapshot(module.generator)
    fit(module, tmp_path)
    assert any(not torch.equal(g0[k], v) for k, v in module.generator.state_dict().items())
    lr, hr, _ = next(iter(synthetic_loader()))
    terms = module.generator_terms(lr, hr, module.generator(lr))
    assert set(terms) == {k for k, v in w.items() if v > 0}
    assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("preset,needs", [("paper", "sr.vit_ckpt"), ("tex_str", "sr.disent_ckpt")])
def test_presets_without_extractor_checkpoints_fail_clearly(
    preset: str, needs: str, make_cfg
) -> None:
    cfg = make_cfg("stage=sr", f"loss={preset}", *SMALL)
    with pytest.raises(ConfigError, match=needs) as err:
        build_module(cfg)
    assert "\n" not in str(err.value)


def test_non_trainable_model_refused(make_cfg) -> None:
    cfg = make_cfg("stage=sr", "loss=l1", "model=bicubic")
    with pytest.raises(ConfigError, match="not trainable"):
        build_module(cfg)


def test_nan_loss_skips_step(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("stage=sr", "loss=l1", *SMALL)
    module = build_module(cfg)
    module.objective.loss_terms["pixel"].weight = float("inf")  # inf * L1: a non-finite total
    g0 = snapshot(module.generator)
    fit(module, tmp_path)
    assert module.skipped_steps == 1
    params = {k for k, _ in module.generator.named_parameters()}
    assert all(
        torch.equal(g0[k], v) for k, v in module.generator.state_dict().items() if k in params
    )


# -- real data: training beats bicubic; checkpoints ------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short stage-sr run on the embedded demo slices (loss=l1), through the real task."""
    from mrsr.training import train_stage
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("sr_demo")
    cfg = compose_cfg(
        tmp,
        [
            "stage=sr",
            "loss=l1",
            "scale=2",
            "model=srresnet_small",
            "model.n_blocks=2",
            "model.n_feats=32",
            "model.residual_bicubic=true",
            "sr.lr=1e-3",
            "sr.batch_size=16",
            "sr.train_crop=32",
            "sr.max_steps=250",
            "sr.val_check_interval=250",
            "sr.ema_decay=0.9",
            "logger=csv",
            "callbacks.progress_bar=null",
            "data.val_slab=[0.6,0.63]",
        ],
    )
    result = train_stage(cfg)
    return cfg, result


def test_short_training_beats_bicubic(trained) -> None:
    cfg, result = trained
    out = Path(cfg.paths.output_dir)
    import csv

    rows = (
        list(csv.DictReader((out / "csv" / "metrics.csv").open())) if (out / "csv").exists() else []
    )
    if not rows:
        rows = [r for p in out.rglob("metrics.csv") for r in csv.DictReader(p.open())]
    val = [r for r in rows if r.get("val/psnr")]
    assert val, "no validation metrics logged"
    assert float(val[-1]["val/psnr"]) > float(val[-1]["val/psnr_bicubic"])
    # held-out subject (seg3d, never trained on): a real gain, not a tie
    gain = result["test"]["test/psnr"] - result["test"]["test/psnr_bicubic"]
    assert gain > 0.3, f"test gain over bicubic {gain:+.2f} dB"
    assert result["test"]["test/ssim"] > result["test"]["test/ssim_bicubic"]
    assert result["test"]["test/score"] == result["test"]["test/psnr"]
    table = (out / "results.csv").read_text().splitlines()
    assert table[0].startswith("method,") and {r.split(",")[0] for r in table[1:]} == {
        "sr",
        "bicubic",
        "zerofill",  # the classical baselines of the test rows
    }
    assert list((out / "images").glob("val_examples_step*.png"))


def test_load_generator_roundtrip_and_refusals(trained, tmp_path: Path) -> None:
    cfg, result = trained
    best = Path(result["best"])
    net = generators.load_generator(str(best), scale=2)
    assert not net.training and net.scale == 2
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    ema = sub_state_dict(ckpt["state_dict"], "ema.module")
    assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())
    assert net(torch.rand(1, 1, 9, 7)).shape == (1, 1, 18, 14)
    with pytest.raises(CheckpointError, match="not found"):
        generators.load_generator(str(tmp_path / "missing.ckpt"), scale=2)
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(best.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt"):
        generators.load_generator(str(bad), scale=2)
    with pytest.raises(CheckpointError, match="x2, expected x4"):
        generators.load_generator(str(best), scale=4)
    other = dict(ckpt, mrsr={**ckpt["mrsr"], "stage": "vit"})
    torch.save(other, tmp_path / "vit.ckpt")
    with pytest.raises(CheckpointError, match="stage-vit"):
        generators.load_generator(str(tmp_path / "vit.ckpt"), scale=2)
    evil = dict(
        ckpt,
        mrsr={
            **ckpt["mrsr"],
            "config": {**ckpt["mrsr"]["config"], "model": {"_target_": "os.system"}},
        },
    )
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="not an mrsr.nets network"):
        generators.load_generator(str(tmp_path / "evil.ckpt"), scale=2)
