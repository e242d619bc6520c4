"""Realism, structure and consistency metrics (``mrsr.metrics.realism``) on images with known
answers, and the ``mrsr.metrics`` package keeping every import of the former module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrsr.data.degrade import degrade
from mrsr.data.phantoms import phantom_slices as phantom
from mrsr.metrics import (
    REALISM,
    REALISM_HIGHER_IS_BETTER,
    RealismMetrics,
    SRMetrics,
    canny_edges,
    canny_thresholds,
    critic_accuracy,
    critic_correct,
    edge_f1,
    gaussian_blur,
    gradient_histogram_distance,
    hfen,
    highband_power_log_ratio,
    log_filter,
    log_size,
    radial_power_spectrum,
    realism_values,
    redegradation_error,
    tissue_dice,
    tissue_labels,
    wasserstein1,
)
from mrsr.ops import upsample


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    return phantom()


def _noisy(x: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the package


def test_former_module_imports_still_work() -> None:
    import mrsr.metrics as m
    from mrsr.metrics import distortion

    for name in (
        "SRMetrics",
        "SliceTable",
        "SUMMARY",
        "HIGHER_IS_BETTER",
        "FOREGROUND",
        "psnr",
        "ssim",
        "nmse",
        "hfen",
        "hfen_terms",
        "log_filter",
        "log_kernel",
        "psnr_fg",
        "ssim_fg",
    ):
        assert getattr(m, name) is getattr(distortion, name)
    assert set(REALISM_HIGHER_IS_BETTER) == set(REALISM)


# ------------------------------------------------------------------ high-band power


def test_radial_spectrum_rings() -> None:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    wave = torch.cos(2 * math.pi * 0.25 * xx)[None, None]  # 16 cycles over 64 px
    radii, power = radial_power_spectrum(wave)
    assert radii[1].item() == pytest.approx(1 / 64) and power.shape == (1, radii.numel())
    assert radii[power[0].argmax()].item() == pytest.approx(0.25)


def test_highband_power_blur_noise_identity(hr: torch.Tensor) -> None:
    assert torch.equal(
        highband_power_log_ratio(hr, hr, 2), torch.zeros(hr.shape[0], dtype=torch.float64)
    )
    assert (highband_power_log_ratio(gaussian_blur(hr, 1.5), hr, 2) < -0.5).all()
    assert (highband_power_log_ratio(upsample(degrade(hr, 4), 4), hr, 4) < 0).all()
    assert (highband_power_log_ratio(_noisy(hr, 0.05), hr, 2) > 0.1).all()
    assert highband_power_log_ratio(hr, torch.zeros_like(hr), 2).isnan().all()  # no HR power


# ------------------------------------------------------------------ gradient distribution


def test_wasserstein_hand_computed() -> None:
    a = torch.tensor([0.0, 1.0, 2.0])
    assert wasserstein1(a, a + 0.5).item() == pytest.approx(0.5)  # a shift gives the shift
    # Q_a = 0 on (0, 1/2], 1 after; Q_b = 0 on (0, 2/3]: they differ by 1 on (1/2, 2/3]
    assert wasserstein1(
        torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    ).item() == pytest.approx(1 / 6)


def test_wasserstein_matches_cdf_integral() -> None:
    """Unequal sizes against the CDF form: W1 = integral of |F_a(x) - F_b(x)| dx."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=37), rng.normal(0.3, 2.0, size=23)
    xs = np.sort(np.concatenate([a, b]))
    cdf = lambda s, x: np.searchsorted(np.sort(s), x, side="right") / s.size  # noqa: E731
    expected = np.sum(np.abs(cdf(a, xs[:-1]) - cdf(b, xs[:-1])) * np.diff(xs))
    assert wasserstein1(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(
        expected, rel=1e-12
    )


def test_gradient_distance(hr: torch.Tensor) -> None:
    assert torch.equal(
        gradient_histogram_distance(hr, hr), torch.zeros(hr.shape[0], dtype=torch.float64)
    )
    assert (gradient_histogram_distance(gaussian_blur(hr, 1.5), hr) > 0.005).all()
    # ramps of slope 0.01 and 0.03 per pixel: the Sobel / 8 magnitudes differ by 0.02 away from
    # the border
    ramp = torch.arange(32.0).expand(1, 1, 32, 32)
    inner = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    inner[..., 1:-1, 1:-1] = True
    assert gradient_histogram_distance(0.03 * ramp, 0.01 * ramp, inner).item() == pytest.approx(
        0.02, abs=1e-6
    )
    # no foreground
    assert gradient_histogram_distance(hr[:1], torch.zeros_like(hr[:1])).isnan().all()


# ------------------------------------------------------------------ HFEN at two scales


def test_hfen_default_is_the_former_function_bit_for_bit(hr: torch.Tensor) -> None:
    sr = gaussian_blur(hr, 1.0)
    resp = log_filter(torch.cat([sr - hr, hr])).double().pow(2).flatten(1).sum(1)  # the former hfen
    former = (resp[: hr.shape[0]] / resp[hr.shape[0] :].clamp_min(1e-12)).sqrt().float()
    assert torch.equal(hfen(sr, hr), former) and torch.equal(hfen(sr, hr, 1.5, 15), former)
    fine = hfen(sr, hr, 0.7)
    assert (log_size(1.5), log_size(0.7)) == (15, 7) and torch.equal(fine, hfen(sr, hr, 0.7, 7))
    assert (fine > former).all()  # the blur removes more of the fine scale
    assert torch.equal(hfen(hr, hr, 0.7, 7), torch.zeros(hr.shape[0]))


# ------------------------------------------------------------------ consistency


@pytest.mark.parametrize("kind", ["bicubic", "kspace"])
def test_redegradation_error(hr: torch.Tensor, kind: str) -> None:
    lr = degrade(hr, 2, kind)
    assert torch.equal(
        redegradation_error(hr, lr, 2, kind), torch.zeros(hr.shape[0], dtype=torch.float64)
    )
    assert (redegradation_error(_noisy(hr, 0.05), lr, 2, kind) > 0.01).all()
    assert redegradation_error(hr, torch.zeros_like(lr), 2, kind).isnan().all()
    with pytest.raises(ValueError, match="does not match"):
        redegradation_error(hr, lr, 4, kind)


# ------------------------------------------------------------------ edges


def test_canny_finds_the_edges_of_a_square() -> None:
    x = torch.zeros(1, 1, 64, 64)
    x[..., 20:44, 20:44] = 1.0
    edges = canny_edges(x)[0, 0]
    ring = torch.zeros(64, 64, dtype=torch.bool)  # the square's outline, 1 px either side
    ring[19:45, 19:45] = True
    ring[21:43, 21:43] = False
    assert edges.any() and not (edges & ~ring).any()  # nothing in the flat areas
    for side in (
        edges[19:45, 19:22],
        edges[19:45, 42:45],
        edges[19:22, 19:45],
        edges[42:45, 19:45],
    ):
        assert side.sum() >= 20  # every side found along its length
    low, high = canny_thresholds(x)
    assert torch.equal(canny_edges(x, low=low, high=high), canny_edges(x)[None][0])
    assert not canny_edges(torch.full((1, 1, 32, 32), 0.7)).any()  # a flat image has no edge


def test_edge_f1(hr: torch.Tensor) -> None:
    assert torch.equal(edge_f1(hr, hr), torch.ones(hr.shape[0], dtype=torch.float64))
    blurred = edge_f1(gaussian_blur(hr, 3.0), hr)
    assert (blurred < 0.8).all() and (blurred >= 0).all()
    assert (edge_f1(gaussian_blur(hr, 0.5), hr) > blurred).all()
    assert edge_f1(hr[:1], torch.zeros_like(hr[:1])).isnan().all()  # no HR edge


# ------------------------------------------------------------------ tissue classes


def test_tissue_labels_of_a_piecewise_constant_image() -> None:
    yy, xx = _grid(64)
    r2 = yy**2 + xx**2
    truth = torch.full((64, 64), -1)
    truth[r2 < 0.8] = 0
    truth[r2 < 0.4] = 1
    truth[(r2 < 0.15) | ((yy - 0.5) ** 2 + xx**2 < 0.02)] = 2
    levels = torch.tensor([0.0, 0.3, 0.6, 0.9])
    x = levels[truth + 1][None, None]
    assert torch.equal(tissue_labels(x), truth[None, None])
    assert torch.equal(tissue_dice(x, x), torch.ones(1, dtype=torch.float64))


def test_tissue_dice(hr: torch.Tensor) -> None:
    assert torch.equal(tissue_dice(hr, hr), torch.ones(hr.shape[0], dtype=torch.float64))
    noisy = tissue_dice(_noisy(hr, 0.1), hr)
    assert (noisy < 0.95).all() and (noisy > 0.3).all()
    assert tissue_dice(hr[:1], torch.zeros_like(hr[:1])).isnan().all()  # no foreground


# ------------------------------------------------------------------ critic


def _patches(x: torch.Tensor, count: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(x.shape[0], (count,), generator=g)
    y, z = (
        torch.randint(x.shape[-1] // 4, 3 * x.shape[-1] // 4 - size, (count,), generator=g)
        for _ in "yz"
    )
    return torch.stack(
        [x[a, :, b : b + size, c : c + size] for a, b, c in zip(i, y, z, strict=True)]
    )


def test_critic_accuracy() -> None:
    images = phantom(n=8, size=128, seed=3)
    hr_patches, other = _patches(images, 256, 48, seed=1), _patches(images, 256, 48, seed=2)
    state = torch.random.get_rng_state()
    same = critic_accuracy(other, hr_patches)
    assert 0.35 <= same <= 0.65
    assert critic_accuracy(gaussian_blur(other, 1.0), hr_patches) > 0.9
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is not touched
    small = hr_patches[:64], other[:64]
    correct = critic_correct(*small, steps=10, seed=5)  # per pair: NaN where it trained the critic
    assert correct.shape == (64,) and correct.isnan().sum() == 32
    assert set(correct[~correct.isnan()].tolist()) <= {0.0, 0.5, 1.0}
    with torch.inference_mode():  # as in a test loop: it trains all the same, identically
        assert critic_accuracy(*small, steps=10, seed=5) == correct.nanmean().item()


# ------------------------------------------------------------------ accumulator


def test_realism_metrics_counts_slices_once_and_skips_undefined(hr: torch.Tensor) -> None:
    hr = torch.cat([hr[:2], torch.zeros_like(hr[:1])])  # the third slice has no foreground
    lr = degrade(hr, 2)
    sr = upsample(lr, 2)
    vol, sl = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    metric, reference = RealismMetrics(scale=2), SRMetrics()
    for _ in range(2):  # a distributed sampler repeating every slice
        metric.update(sr, hr, lr, vol, sl)
        reference.update(sr, hr, vol, sl)
    out, table = metric.compute(), metric.per_slice()
    assert out["n_slices"] == 3 and out["n_slices_fg"] == 2
    assert set(table) == {"vol", "sl", *REALISM} and table["grad_w1"].shape == (3,)
    direct = realism_values(sr.clamp_min(0), hr, lr, 2)
    for name in REALISM:
        torch.testing.assert_close(table[name], direct[name], rtol=0, atol=0, equal_nan=True)
        # means over the slices with HR foreground (the empty one's clamped HFEN would dominate)
        assert out[name] == pytest.approx(direct[name][:2].nanmean().item(), rel=1e-12, nan_ok=True)
    assert (
        table["grad_w1"][2].isnan()
        and table["tissue_dice"][2].isnan()
        and table["edge_f1"][2].isnan()
    )
    assert not table["hfen_07"][2].isnan()  # defined on the empty slice, but left out of the mean
    assert "hfen_15" not in out  # the protocol's HFEN (sigma 1.5) is SRMetrics' hfen


def test_under_autocast_the_values_do_not_change(hr: torch.Tensor) -> None:
    lr = degrade(hr, 2)
    sr = upsample(lr, 2)
    plain = realism_values(sr, hr, lr, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = realism_values(sr, hr, lr, 2)
    for name in REALISM:
        assert cast[name].dtype == torch.float64
        torch.testing.assert_close(cast[name], plain[name], equal_nan=True, rtol=0, atol=0)


def test_report_shows_realism_as_slice_means(tmp_path) -> None:
    from mrsr.report import tables
    from tests.test_metrics import _job

    _job(tmp_path, "0", "gan", {"hf_power": -0.51234, "edge_f1": 0.91, "redeg": 0.0123})
    md = tables.to_markdown(tables.table_rows(tables.collect(tmp_path)))
    assert "| x2 HF power (log10, 0 best) | x2 re-degradation | x2 edge F1 |" in md
    assert "| -0.512 | 0.0123 | 0.9100 |" in md  # slice means: no "± std over volumes"
    assert "slice means over the test slices with foreground" in md
