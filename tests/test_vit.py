"""Stage ``vit``: the network, pretrained loading, training on the demo classes, the extractor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR

from mrsr.errors import CheckpointError, MrsrError
from mrsr.extractors import ViTExtractor, load_vit_extractor
from mrsr.nets.vit import SliceViT, load_pretrained_vit
from mrsr.training import train_stage

TINY = dict(img_size=32, patch_size=16, hidden_size=96, mlp_dim=192, num_layers=12, num_heads=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and robust on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_head_starts_at_zero() -> None:
    net = SliceViT(
        img_size=32,
        patch_size=16,
        hidden_size=32,
        mlp_dim=64,
        num_layers=1,
        num_heads=2,
        num_classes=3,
    )
    x = torch.rand(4, 1, 40, 36)
    assert torch.equal(net(x), torch.zeros(4, 3))
    f = net.features(x)
    assert f.shape == (4, 32) and f.abs().sum() > 0  # the encoder itself is not zero
    cls = SliceViT(
        img_size=32,
        patch_size=16,
        hidden_size=32,
        mlp_dim=64,
        num_layers=1,
        num_heads=2,
        feature="cls",
    )
    assert not hasattr(cls.vit, "classification_head")
    assert torch.allclose(cls.features(x), cls.vit(cls.resize(x))[0][:, 0])


def test_bf16_autocast_cpu() -> None:
    torch.manual_seed(0)
    net = SliceViT(
        img_size=64, patch_size=16, hidden_size=64, mlp_dim=128, num_layers=2, num_heads=4
    ).eval()
    ext = ViTExtractor(net)
    x = torch.rand(3, 1, 50, 70)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f, m = ext(x)
    assert f.dtype == torch.float32 and m.dtype == torch.float32 and torch.isfinite(f).all()
    ref, ref_map = ext(x)
    cos = torch.nn.functional.cosine_similarity(f, ref, dim=1)
    assert (cos > 0.99).all() and m.shape == ref_map.shape == (3, 64, 4, 4)


def test_extractor_keeps_the_trained_pixel_scale() -> None:
    """Trained on 96-px crops resized to 64 (scale 2/3): a 96-px patch is fed at 64 px (4x4 tokens),
    a 192-px one at 128 px (8x8 tokens, position embedding resized); at img_size both paths
    agree."""
    torch.manual_seed(0)
    net = SliceViT(
        img_size=64, patch_size=16, hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2
    ).eval()
    ext = ViTExtractor(net, pixel_scale=64 / 96)
    x = torch.rand(2, 1, 96, 96)
    pooled, tokens = ext(x)
    assert tokens.shape == (2, 32, 4, 4) and torch.allclose(pooled, net.features(x), atol=1e-5)
    _, big = ext(torch.rand(2, 1, 192, 150))
    assert big.shape == (2, 32, 8, 6)
    assert ext.input_size(10, 10) == (16, 16)  # at least one patch
    same = net.encode(net.resize(x), size=(64, 64))[1]
    assert torch.allclose(same, tokens, atol=1e-5)
    legacy = ViTExtractor(net)  # no stored train_crop: resized to img_size
    assert legacy(torch.rand(1, 1, 192, 150))[1].shape == (1, 32, 4, 4)


def test_masked_image_pretext_learns(tmp_path: Path) -> None:
    """The masked-reconstruction loss falls on real slices within a few steps."""
    from mrsr.stages.vit import ViTModule

    torch.manual_seed(0)
    net = dict(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2)
    module = ViTModule(net, ["a", "b"], lr=3e-3, mim_weight=1.0, mask_ratio=0.5, train_crop=32)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    import nibabel as nib
    import numpy as np

    from mrsr.data.degrade import normalise_volume
    from mrsr.data.sources import demo_dir

    vol = normalise_volume(
        np.asarray(nib.load(demo_dir() / "seg3d_T1.nii.gz").dataobj, dtype=np.float32)
    )
    x = torch.from_numpy(np.ascontiguousarray(vol[60:124:4, 60:124:4, 70:86].transpose(2, 0, 1)))[
        :, None
    ]
    losses = []
    for _ in range(60):
        torch.manual_seed(1)  # the same mask every step: the loss must fall
        loss = module.masked_reconstruction(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])
    assert module.config["train_crop"] == 32 and module.mim_head.out_features == 64


def _unetr_file(tmp_path: Path, hidden: int = 96) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    unetr = UNETR(1, 2, (32, 32, 32), feature_size=16, hidden_size=hidden, mlp_dim=192, num_heads=4)
    sd = unetr.state_dict()
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": sd}, path)
    return path, sd


def test_load_unetr_3d_into_2d(tmp_path: Path) -> None:
    path, sd = _unetr_file(tmp_path)
    net = SliceViT(**TINY, num_classes=3)
    report = load_pretrained_vit(net, path)
    enc = net.vit.state_dict()
    n_vit = sum(k.startswith("vit.") for k in sd)
    assert len(report.loaded) == len(enc) == n_vit  # every encoder tensor, and only those
    assert len(report.skipped) == len(sd) - n_vit and not report.missing
    assert all(not k.startswith("vit.") for k in report.skipped)  # the UNETR decoder
    w3 = sd["vit.patch_embedding.patch_embeddings.weight"]
    assert torch.allclose(enc["patch_embedding.patch_embeddings.weight"], w3.mean(-1))
    pos3 = sd["vit.patch_embedding.position_embeddings"].reshape(2, 2, 2, 96)
    assert torch.allclose(
        enc["patch_embedding.position_embeddings"][0], pos3.mean(2).reshape(4, 96)
    )
    assert torch.equal(enc["blocks.11.attn.qkv.weight"], sd["vit.blocks.11.attn.qkv.weight"])
    assert torch.equal(net.head.weight, torch.zeros_like(net.head.weight))

    # a larger 2D grid: position embedding resized; fewer layers: a partial load, refused by default
    big = SliceViT(**{**TINY, "img_size": 64}, num_classes=3)
    assert len(load_pretrained_vit(big, path).loaded) == n_vit
    short = SliceViT(**{**TINY, "num_layers": 2, "feature": "cls"}, num_classes=3)
    with pytest.raises(CheckpointError) as err:
        load_pretrained_vit(short, path)
    assert "partial load refused" in _one_line(err) and "unetr.pt" in _one_line(err)
    rep = load_pretrained_vit(short, path, allow_partial=True)
    assert rep.missing == ["cls_token"]
    unused = [k for k in sd if k.startswith("vit.blocks.") and int(k.split(".")[2]) >= 2]
    assert sorted(rep.skipped) == sorted([k for k in sd if not k.startswith("vit.")] + unused)


def test_load_unetr_saved_by_older_monai(tmp_path: Path) -> None:
    """Older MONAI versions saved no (unused) cross-attention norms: still a complete load."""
    _, sd = _unetr_file(tmp_path)
    old = {k: v for k, v in sd.items() if "norm_cross_attn" not in k}
    assert len(old) < len(sd)
    path = tmp_path / "old_unetr.pt"
    torch.save(old, path)
    net = SliceViT(**TINY, num_classes=3)
    report = load_pretrained_vit(net, path)
    assert not report.missing
    assert len(report.loaded) == sum(k.startswith("vit.") for k in old)


def test_bad_checkpoints(tmp_path: Path) -> None:
    net = SliceViT(**TINY, num_classes=3)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    wrong, _ = _unetr_file(tmp_path, hidden=48)
    sr_like = tmp_path / "sr.ckpt"
    torch.save(
        {
            "state_dict": {"net.head.0.weight": torch.zeros(2)},
            "mrsr": {"stage": "sr", "config": {}},
        },
        sr_like,
    )
    cases = [
        (lambda: load_pretrained_vit(net, garbage), "garbage.pt"),
        (lambda: load_pretrained_vit(net, tmp_path / "missing.pt"), "not found"),
        (lambda: load_pretrained_vit(net, wrong), "hidden size 48 in the file, the model has 96"),
        (lambda: load_pretrained_vit(net, sr_like), "no ViT patch embedding"),
        (lambda: load_vit_extractor(garbage), "corrupt"),
        (lambda: load_vit_extractor(tmp_path / "missing.ckpt"), "not found"),
        (lambda: load_vit_extractor(sr_like), "expected a stage-vit checkpoint"),
        (lambda: load_vit_extractor(wrong), "not an mrsr checkpoint"),
    ]
    for fn, expect in cases:
        with pytest.raises(MrsrError) as err:
            fn()
        assert expect in _one_line(err)


def test_train_demo_classes_and_extractor(make_cfg, tmp_path: Path) -> None:
    """A tiny ViT learns the demo contrasts (T1/T2/FLAIR) well above chance on held-out slices;
    its checkpoint gives a frozen extractor that still passes gradients to its input."""
    cfg = make_cfg(
        "stage=vit",
        "~callbacks.progress_bar",
        "trainer=cpu",
        "vit.max_steps=400",
        "vit.val_check_interval=100",
        "vit.lr=1e-3",
    )
    result = train_stage(cfg)
    best = Path(result["best"])
    assert best.name == "best.ckpt" and best.exists()

    # held-out accuracy, recomputed here from the best checkpoint on the val slab
    from mrsr.building import build_datamodule

    dm = build_datamodule(cfg)
    dm.setup("fit")
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["mrsr"]["config"]["classes"] == dm.classes and len(dm.classes) == 3
    assert load_vit_extractor(best).pixel_scale == pytest.approx(
        cfg.vit.img_size / cfg.vit.train_crop
    )
    ext = load_vit_extractor(best)
    net = ext.net
    correct = total = 0
    with torch.no_grad():
        for _, hr, meta in dm.val_dataloader():
            correct += int((net(hr).argmax(1) == meta.label).sum())
            total += len(meta.label)
    acc = correct / total
    assert total >= 30 and acc > 0.6, acc
    assert (
        abs(
            acc
            - ckpt["callbacks"][next(k for k in ckpt["callbacks"] if "ModelCheckpoint" in k)][
                "best_model_score"
            ]
        )
        < 1e-4
    )

    # the extractor: frozen, stays in eval, unchanged by an optimizer step, gradient reaches input
    assert not any(p.requires_grad for p in ext.parameters())
    parent = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), ext)
    parent.train()
    assert not ext.training
    before = {k: v.clone() for k, v in ext.state_dict().items()}
    x = torch.rand(2, 1, 48, 48, requires_grad=True)
    opt = torch.optim.Adam([p for p in parent.parameters() if p.requires_grad] + [x], lr=0.1)
    feats = parent(x)[1]  # the token map
    target = ext(torch.rand(2, 1, 48, 48))[1]
    loss = (1 - torch.nn.functional.cosine_similarity(feats, target, dim=1)).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert parent[0].weight.grad.abs().sum() > 0
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in ext.state_dict().items())
