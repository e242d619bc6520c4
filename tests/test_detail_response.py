"""Response of extractor features to detail above the LR Nyquist (issue 26, item 1): the low-passes,
toy extractors of known behaviour, the pixel-scale effect on the real extractor classes, and the
pixel-scale-1 presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsr.extractors import DisentExtractor, ViTExtractor
from mrsr.metrics.detail_response import (
    demo_patches,
    detail_response,
    ideal_lowpass,
    lowpass,
    tile_patches,
)
from mrsr.nets.swapae import StructureTextureEncoder
from mrsr.nets.vit import SliceViT

# Pixel-scale effect at x2, bicubic low-pass, random-init tiny extractors (the demo `tiny` nets),
# 32 patches of 96 px of the demo test subject. Measured (seeds 0-5; the test uses seed 0):
#   DisentExtractor z_s:          pixel scale 1: 0.020-0.117 (0.117); 48/112: 0.0009-0.0059 (0.0047)
#   ViTExtractor tokens_spatial:  pixel scale 1: 0.018-0.021 (0.020); 64/112: 0.0012-0.0014 (0.0012)
# (Trained for the demo's 300 steps, both extractors are blind at x2 at either scale, < 0.001:
# records/2026-12-03-detail-response.)
DISENT_FLOOR = 0.01  # response of z_s at pixel scale 1
VIT_FLOOR = 0.01  # response of the token map at pixel scale 1
MIN_GAIN = 5.0  # pixel scale 1 over the downsampling scale (measured >= 12x)
TOY_BLIND = 0.01  # low-passing toy: measured 1e-4 (bicubic), 4e-4 (kspace) at x2
TOY_SEES = 0.3  # high-passing toy: measured 0.45 (bicubic), 1.07 (kspace) at x2


@pytest.fixture(scope="module")
def hr() -> Tensor:
    return demo_patches(32, 96)


class Blurred(nn.Module):
    """Toy extractor: 8x8 block means (nothing above 1/16 cycle per pixel), flattened."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 8).flatten(1)


class Detail(nn.Module):
    """Toy extractor: the image's content above the x2 LR Nyquist, flattened."""

    def forward(self, x: Tensor) -> Tensor:
        return (x - ideal_lowpass(x, 2)).flatten(1)


def test_ideal_lowpass_keeps_below_and_removes_above_the_lr_nyquist() -> None:
    n = 32  # DCT-II basis functions: exact on the mirrored patch, k / (2n) cycles per pixel
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    low, high = torch.cos(4 * t), torch.cos(24 * t)  # 1/16 and 3/8 cycle per pixel; x2 Nyquist 1/4
    img = (low[:, None] * low[None, :] + high[:, None] * torch.ones(n)[None, :])[None, None]
    kept = ideal_lowpass(img, 2)
    assert torch.allclose(kept, (low[:, None] * low[None, :])[None, None], atol=1e-10)
    assert torch.allclose(ideal_lowpass(kept, 2), kept, atol=1e-10)  # nothing left to remove
    assert lowpass(img.float(), 2, "bicubic").shape == img.shape
    with pytest.raises(ValueError, match="unknown"):
        lowpass(img, 2, "gauss")


def test_toy_extractors(hr: Tensor) -> None:
    blind = detail_response(Blurred(), hr, 2)
    sees = detail_response(Detail(), hr, 2)
    assert set(blind) == {"reference/out0", "bicubic/out0", "kspace/out0"}
    assert blind["reference/out0"] > 0.01  # different patches: different block means
    assert max(blind["bicubic/out0"], blind["kspace/out0"]) < TOY_BLIND, blind
    assert min(sees["bicubic/out0"], sees["kspace/out0"]) > TOY_SEES, sees
    with pytest.raises(ValueError, match="at least 2"):
        detail_response(Blurred(), hr[:1], 2)


def _tiny_extractors(pixel_scale: str) -> tuple[DisentExtractor, ViTExtractor]:
    """The demo `tiny` nets at random init (seed 0), fed at ``img_size / 112`` or at pixel
    scale 1."""
    torch.manual_seed(0)
    enc = StructureTextureEncoder(
        img_size=48, enc_channels=[8, 8, 8, 8], structure_channels=4, texture_dim=32
    )
    torch.manual_seed(0)
    net = SliceViT(
        img_size=64,
        patch_size=16,
        hidden_size=96,
        mlp_dim=192,
        num_layers=2,
        num_heads=4,
        num_classes=3,
    )
    if pixel_scale == "one":
        return DisentExtractor(enc, pixel_scale=1.0), ViTExtractor(net, pixel_scale=1.0)
    return DisentExtractor(enc, pixel_scale=48 / 112), ViTExtractor(net, pixel_scale=64 / 112)


def test_pixel_scale_one_sees_sr_detail(hr: Tensor) -> None:
    """Fed downsampled (the old presets) the extractors' Nyquist is at the LR Nyquist at x2 and
    they barely respond; at pixel scale 1 the same networks do."""
    (d_one, v_one), (d_old, v_old) = _tiny_extractors("one"), _tiny_extractors("old")
    # the SR patch, unresized
    assert d_one.input_size(96, 96) == v_one.input_size(96, 96) == (96, 96)
    assert d_old.input_size(96, 96) == v_old.input_size(96, 96) == (48, 48)
    z_s, z_t = d_one(hr[:2])
    assert z_s.shape == (2, 4, 24, 24) and z_t.shape == (2, 32)
    # trained at 64 px: position embedding 4x4 -> 6x6
    assert v_one(hr[:2])[1].shape == (2, 96, 6, 6)
    for one, old, key, floor in (
        (d_one, d_old, "bicubic/z_s", DISENT_FLOOR),
        (v_one, v_old, "bicubic/tokens_spatial", VIT_FLOOR),
    ):
        r_one, r_old = detail_response(one, hr, 2)[key], detail_response(old, hr, 2)[key]
        assert r_one > floor and r_one > MIN_GAIN * r_old, (key, r_one, r_old)


def test_scale_one_presets_train_at_the_network_input_size(make_cfg) -> None:
    for stage, option, value in (("vit", "mim_weight", 1.0), ("disent", "lr_views", True)):
        cfg = make_cfg(f"stage={stage}", f"{stage}=tiny_sr")
        recipe = cfg[stage]
        assert (
            recipe.train_crop
            == recipe.img_size
            == cfg.data.patch_size
            == cfg.stage.module.train_crop
        )
        assert recipe[option] == value and cfg.stage.module[option] == value
        tiny = make_cfg(f"stage={stage}")[stage]  # the tiny preset, otherwise the same
        assert tiny.img_size == recipe.img_size and tiny.train_crop != recipe.train_crop


def test_tile_patches_keeps_foreground_tiles() -> None:
    slices = torch.zeros(2, 1, 64, 64)
    slices[0, :, :32, :32] = 1.0  # one foreground tile of 32 out of 8
    assert torch.equal(tile_patches(slices, 32, 1), torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="only 1 patches"):
        tile_patches(slices, 32, 2)
