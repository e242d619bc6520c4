"""Stage ``disent``: code shapes, training improves reconstruction, the swap check, one G/D step,
the frozen extractor and checkpoint errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mrsr.errors import MrsrError
from mrsr.extractors import load_disent_extractor
from mrsr.metrics import psnr
from mrsr.nets.swapae import StructureTextureEncoder, resize_to
from mrsr.stages.disent import DisentModule, pearson, sobel_edges, swap_partners

TINY = {"img_size": 32, "enc_channels": [8, 8, 8, 8], "structure_channels": 4, "texture_dim": 16}


class _Meta:
    def __init__(self, label):
        self.label = label


def _batch(n: int = 4, size: int = 40, labels=None):
    hr = torch.rand(n, 1, size, size)
    return hr, hr, _Meta(torch.as_tensor(labels if labels is not None else [0] * n))


def _attach_trainer(module: DisentModule):
    """Minimal stand-ins so training_step can run outside a Trainer."""
    opts = module.configure_optimizers()
    module.optimizers = lambda: opts
    module.manual_backward = lambda loss: loss.backward()
    module.log = module.log_dict = lambda *a, **k: None
    return opts


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (100, 80)])
def test_code_shapes_equal_for_any_input_size(size):
    enc = StructureTextureEncoder(
        img_size=64, enc_channels=[16, 16, 8, 8], structure_channels=4, texture_dim=32
    )
    z_s, z_t = enc(torch.rand(3, 1, *size))
    assert z_s.shape == (3, 4, 16, 16)
    assert z_t.shape == (3, 32)


def test_paper_size_structure_code_is_64x64():
    enc = StructureTextureEncoder()  # paper sizes: 256 input, 64/64/32/32 channels, z_t 256
    with torch.no_grad():
        z_s, z_t = enc(torch.rand(1, 1, 256, 256))
    assert z_s.shape[-2:] == (64, 64)
    assert z_t.shape == (1, 256)


def test_swap_partners_prefer_same_label():
    p = swap_partners(torch.tensor([0, 1, 0, 1, 2]))
    assert p.tolist() == [2, 3, 0, 1, 0]  # label 2 has no partner: falls back to the next image


def test_edge_correlation_measure():
    x = torch.zeros(2, 1, 32, 32)
    x[0, :, 8:24, 8:24] = 1
    x[1, :, :, 16:] = 1
    e = sobel_edges(x)
    assert e[0, 0, 16, 16] < 1e-5 and e[0, 0, 8, 16] > 0  # flat inside, edge on the border
    same = pearson(e, sobel_edges(0.5 * x + 0.2))  # contrast change keeps structure
    other = pearson(e, sobel_edges(x.flip(0)))
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    assert (other < 0.5).all()


def test_one_step_updates_generator_and_discriminator():
    torch.manual_seed(0)
    m = DisentModule(TINY, disc_channels=8, r1_every=1, cooccurrence=True)
    _attach_trainer(m)
    before = {
        n: copy.deepcopy(getattr(m, n).state_dict())
        for n in ("encoder", "generator", "discriminator", "cooc")
    }
    m.training_step(_batch(labels=[0, 1, 0, 1]), 0)
    for name, sd in before.items():
        after = getattr(m, name).state_dict()
        assert any(not torch.equal(sd[k], after[k]) for k in sd), f"{name} was not updated"


def test_lr_views_learn_the_lr_hr_swap():
    """With lr_views the step adds the LR/HR swap term; the LR view is the SR stage's input
    (degraded, bicubic-upsampled); a repeated step on one batch lowers it."""
    from mrsr.data.degrade import degrade
    from mrsr.ops import upsample

    torch.manual_seed(0)
    m = DisentModule(
        TINY,
        weights={"adv": 0.0, "swap": 0.0},
        disc_channels=8,
        lr_views=True,
        scale=2,
        degradation="bicubic",
        lr=2e-3,
        betas=(0.9, 0.99),
    )
    _attach_trainer(m)
    logged = {}
    m.log_dict = lambda d, **k: logged.update({k_: float(v) for k_, v in d.items()})
    hr = torch.rand(4, 1, 40, 40)
    assert torch.equal(m.lr_view(hr), upsample(degrade(hr, 2, "bicubic"), 2))
    batch = (hr, hr, _Meta(torch.as_tensor([0, 1, 0, 1])))
    first = None
    for _ in range(15):
        m.training_step(batch, 0)
        first = logged["train/lrswap"] if first is None else first
    assert logged["train/lrswap"] < first
    assert m.config["lr_views"] and m.config["degradation"] == "bicubic"
    with pytest.raises(MrsrError, match="lr_views"):
        DisentModule(TINY, lr_views=True)  # no scale


def test_extractor_input_size_keeps_the_trained_pixel_scale():
    from mrsr.extractors import DisentExtractor

    enc = StructureTextureEncoder(**TINY).eval()
    ext = DisentExtractor(enc, pixel_scale=32 / 64)  # trained on 64-px crops resized to 32
    assert ext.input_size(96, 96) == (48, 48) and ext.input_size(10, 10) == (16, 16)
    z_s, z_t = ext(torch.rand(2, 1, 96, 96))
    assert z_s.shape == (2, 4, 12, 12) and z_t.shape == (2, 16)
    # legacy: img_size
    assert DisentExtractor(enc)(torch.rand(2, 1, 96, 96))[0].shape == (2, 4, 8, 8)


def test_nan_step_is_skipped():
    m = DisentModule(TINY, disc_channels=8, r1_gamma=0.0)
    _attach_trainer(m)
    before = copy.deepcopy(m.state_dict())
    hr, lr, meta = _batch()
    hr[0, 0, 0, 0] = float("nan")
    m.training_step((lr, hr, meta), 0)
    assert m.skipped_steps >= 1
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _val_images(dm, size: int) -> torch.Tensor:
    return torch.cat([resize_to(hr, size) for _, hr, _ in dm.val_dataloader()])


def test_training_improves_reconstruction_and_swap_keeps_structure(make_cfg):
    """100 G/D steps of a 32-pixel autoencoder on the demo data (about 30-60 s on 2 CPU cores)."""
    cfg = make_cfg(
        "stage=disent",
        "disent.img_size=32",
        "disent.enc_channels=[8,8,8,8]",
        "disent.texture_dim=16",
        "disent.disc_channels=8",
        "disent.lr=2e-3",
        "disent.batch_size=8",
        "disent.train_crop=64",
    )
    from mrsr.building import build_datamodule, build_module

    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    m = build_module(cfg)
    _attach_trainer(m)
    val = _val_images(dm, m.img_size)  # held-out slab, never seen in training

    def rec_psnr() -> float:
        with torch.no_grad():
            return float(psnr(m.reconstruct(val).clamp(0, 1), val).mean())

    start = rec_psnr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster on a shared CPU
    try:
        steps = 0
        while steps < 100:
            for batch in dm.train_dataloader():
                m.training_step(batch, steps)
                steps += 1
                if steps >= 100:
                    break
    finally:
        torch.set_num_threads(threads)
    end = rec_psnr()
    assert end > start + 3.0, (start, end)
    sw = m.swap_check(val)
    assert sw["s12"].shape == val.shape
    margin = float((sw["corr_x1"] - sw["corr_x2"]).mean())
    assert margin > 0.03, margin  # the swap keeps the edges of the image that gave z_s


@pytest.fixture(scope="module")
def saved_ckpt(tmp_path_factory) -> Path:
    """A stage-disent checkpoint in the format the Trainer writes (``state_dict`` + ``mrsr``)."""
    m = DisentModule(TINY, disc_channels=8)
    ckpt: dict = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("ckpt") / "disent.ckpt"
    torch.save(ckpt, path)
    return path


def test_extractor_is_frozen(saved_ckpt):
    ext = load_disent_extractor(saved_ckpt)
    assert sum(p.requires_grad for p in ext.parameters()) == 0
    ext.train()
    assert not ext.training and not ext.encoder.training
    z_s, z_t = ext(torch.rand(2, 1, 50, 50))
    assert z_s.shape == (2, 4, 8, 8) and z_t.shape == (2, 16)
    # a network trained through the extractor's losses: only that network changes
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.Adam([*net.parameters(), *ext.parameters()], lr=0.1)
    before = copy.deepcopy(ext.state_dict())
    x = torch.rand(2, 1, 50, 50, requires_grad=True)
    y = net(x)
    a, b = ext(y), ext(torch.rand(2, 1, 50, 50))
    loss = sum(
        1 - torch.nn.functional.cosine_similarity(u.flatten(1), v.flatten(1)).mean()
        for u, v in zip(a, b, strict=True)
    )
    loss.backward()
    opt.step()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(torch.equal(before[k], ext.state_dict()[k]) for k in before)


def test_extractor_matches_trained_encoder(saved_ckpt):
    ckpt = torch.load(saved_ckpt, weights_only=True)
    enc = StructureTextureEncoder(**TINY)
    enc.load_state_dict(
        {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    )
    x = torch.rand(2, 1, 32, 32)
    ext = load_disent_extractor(saved_ckpt)
    with torch.no_grad():
        for u, v in zip(ext(x), enc(x), strict=True):
            assert torch.equal(u, v)


def _one_line(err: MrsrError) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def test_bad_checkpoints_give_one_line_errors(tmp_path, saved_ckpt):
    with pytest.raises(MrsrError) as e:
        load_disent_extractor(tmp_path / "missing.ckpt")
    assert "not found" in _one_line(e.value)

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(MrsrError) as e:
        load_disent_extractor(garbage)
    assert str(garbage) in _one_line(e.value)

    vit_like = tmp_path / "vit.ckpt"
    torch.save(
        {"state_dict": {"net.w": torch.zeros(1)}, "mrsr": {"stage": "vit", "config": {"net": {}}}},
        vit_like,
    )
    with pytest.raises(MrsrError) as e:
        load_disent_extractor(vit_like)
    assert "stage-vit" in _one_line(e.value)

    ckpt = torch.load(saved_ckpt, weights_only=True)
    ckpt["mrsr"]["config"]["net"]["texture_dim"] = 99  # weights no longer fit the stored config
    bad = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(MrsrError) as e:
        load_disent_extractor(bad)
    assert "do not fit" in _one_line(e.value)

    del ckpt["mrsr"]["config"]
    torch.save(ckpt, bad)
    with pytest.raises(MrsrError) as e:
        load_disent_extractor(bad)
    assert "network config" in _one_line(e.value)
