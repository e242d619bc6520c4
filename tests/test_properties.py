"""Property-based tests (hypothesis) for the LR degradations and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrsr.data.degrade import crop_to_multiple, degrade
from mrsr.metrics import nmse, psnr, ssim
from mrsr.ops import upsample

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def images(draw, min_side: int = 8, max_side: int = 40, multiple: int = 4) -> torch.Tensor:
    """Batches of (N, 1, H, W) images in [0, 1] with H, W divisible by ``multiple``."""
    n = draw(st.integers(1, 3))
    h = draw(st.integers(min_side // multiple, max_side // multiple)) * multiple
    w = draw(st.integers(min_side // multiple, max_side // multiple)) * multiple
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["uniform", "smooth", "binary", "sparse"]))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h, w, generator=g)
    if kind == "smooth":
        x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    elif kind == "binary":
        x = (x > 0.5).float()
    elif kind == "sparse":
        x = x * (x > 0.9)
    return x


scales = st.sampled_from([2, 4])
kinds = st.sampled_from(["bicubic", "kspace"])


@SETTINGS
@given(x=images(), scale=scales, kind=kinds)
def test_degrade_shape_range_determinism(x: torch.Tensor, scale: int, kind: str) -> None:
    lr = degrade(x, scale, kind)
    assert lr.shape == (*x.shape[:2], x.shape[-2] // scale, x.shape[-1] // scale)
    assert lr.dtype == x.dtype and torch.isfinite(lr).all()
    assert lr.min() >= 0  # magnitude images: only the lower bound is enforced
    assert lr.max() <= 1.5 * x.max() + 1e-6  # bounded ringing, nothing clipped at the top
    assert torch.equal(lr, degrade(x.clone(), scale, kind))
    # degrading a batch equals degrading each image alone
    assert torch.allclose(lr[-1:], degrade(x[-1:], scale, kind), atol=1e-6)


@SETTINGS
@given(x=images(min_side=16), scale=scales)
def test_kspace_preserves_mean(x: torch.Tensor, scale: int) -> None:
    lr = degrade(x, scale, "kspace")
    # the DC term is kept exactly; taking the magnitude can only move the mean a little
    assert torch.allclose(lr.mean((-2, -1)), x.mean((-2, -1)), atol=0.05 + 0.1 * x.std().item())


@SETTINGS
@given(x=images(), scale=scales)
def test_bicubic_of_constant_is_constant(x: torch.Tensor, scale: int) -> None:
    c = torch.full_like(x, float(x.mean()))
    assert torch.allclose(degrade(c, scale, "bicubic"), c[..., ::scale, ::scale], atol=1e-5)
    assert torch.allclose(degrade(c, scale, "kspace"), c[..., ::scale, ::scale], atol=1e-5)


@SETTINGS
@given(x=images(multiple=1), scale=scales)
def test_crop_to_multiple(x: torch.Tensor, scale: int) -> None:
    y = crop_to_multiple(x, scale)
    h, w = x.shape[-2:]
    assert y.shape[-2] % scale == 0 and y.shape[-1] % scale == 0
    assert h - scale < y.shape[-2] <= h and w - scale < y.shape[-1] <= w


@SETTINGS
@given(x=images(), scale=scales, mode=st.sampled_from(["nearest", "bilinear", "bicubic"]))
def test_upsample_shape_range(x: torch.Tensor, scale: int, mode: str) -> None:
    y = upsample(x, scale, mode)
    assert y.shape[-2:] == (x.shape[-2] * scale, x.shape[-1] * scale)
    assert y.min() >= 0 and y.max() <= 1.5 * x.max() + 1e-6  # clamped at 0 only


@SETTINGS
@given(x=images(min_side=12))
def test_identical_images(x: torch.Tensor) -> None:
    # torchmetrics returns +inf dB for a zero error
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert torch.equal(nmse(x, x), torch.zeros(x.shape[0]))
    assert torch.allclose(ssim(x, x), torch.ones(x.shape[0]), atol=1e-5)


@SETTINGS
@given(x=images(min_side=12))
def test_nmse_of_zero_prediction_is_one(x: torch.Tensor) -> None:
    x = x.clone()
    x[..., 0, 0] = 0.5  # never an all-zero target
    assert torch.allclose(nmse(torch.zeros_like(x), x), torch.ones(x.shape[0]), atol=1e-6)


@SETTINGS
@given(x=images(min_side=12), y=images(min_side=12))
def test_metric_ranges(x: torch.Tensor, y: torch.Tensor) -> None:
    n = min(x.shape[0], y.shape[0])
    h, w = min(x.shape[-2], y.shape[-2]), min(x.shape[-1], y.shape[-1])
    a, b = x[:n, :, :h, :w], y[:n, :, :h, :w].clone()
    b[..., 0, 0] = 0.5
    e = nmse(a, b)
    assert (e >= 0).all() and torch.isfinite(e).all()
    s = ssim(a, b)
    assert (s <= 1 + 1e-5).all() and (s >= -1 - 1e-5).all()
    mse = (a - b).pow(2).flatten(1).mean(1).double()
    p = psnr(a, b).double()
    for i in range(n):
        if mse[i] > 0:
            assert p[i].item() == pytest.approx(10 * math.log10(1 / mse[i].item()), abs=1e-3)


@SETTINGS
@given(x=images(min_side=12), noise=st.floats(0.01, 0.2))
def test_psnr_decreases_with_noise(x: torch.Tensor, noise: float) -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(x.shape, generator=g)
    small, large = x + noise * e, x + 2 * noise * e
    assert (psnr(small, x) > psnr(large, x)).all()
    assert (nmse(small, x) < nmse(large, x)).all()
    assert np.all(np.isfinite(psnr(small, x).numpy()))
