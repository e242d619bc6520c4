"""HFEN and the foreground-masked PSNR/SSIM of the evaluation protocol (``mrsr.metrics``),
checked against independent numpy computations, and their columns in the sweep report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mrsr.data.degrade import degrade, normalise_volume
from mrsr.metrics import (
    FOREGROUND,
    HIGHER_IS_BETTER,
    SUMMARY,
    SRMetrics,
    hfen,
    log_filter,
    log_kernel,
    psnr,
    psnr_fg,
    ssim,
    ssim_fg,
)
from mrsr.ops import upsample
from mrsr.report import tables
from tests.conftest import run_labels

# ------------------------------------------------------------------ independent reference


def _np_log_kernel(sigma: float = 1.5, size: int = 15) -> np.ndarray:
    """The continuous LoG formula on the grid, minus its mean (MATLAB's up to a scale ~1)."""
    ax = np.arange(size, dtype=np.float64) - size // 2
    x, y = np.meshgrid(ax, ax)
    r2 = x**2 + y**2
    k = -1.0 / (np.pi * sigma**4) * (1.0 - r2 / (2 * sigma**2)) * np.exp(-r2 / (2 * sigma**2))
    return k - k.mean()


def _np_log(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Direct 2D convolution (the kernel is symmetric) with reflect padding, same size."""
    p = k.shape[0] // 2
    padded = np.pad(img.astype(np.float64), p, mode="reflect")
    h, w = img.shape
    out = np.zeros((h, w))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * padded[i : i + h, j : j + w]
    return out


def _np_hfen_terms(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    k = _np_log_kernel()
    lt = _np_log(target, k)
    return float(np.sum((_np_log(pred, k) - lt) ** 2)), float(np.sum(lt**2))


def _np_hfen(pred: np.ndarray, target: np.ndarray) -> float:
    err2, y2 = _np_hfen_terms(pred, target)
    return math.sqrt(err2 / y2)


@pytest.fixture(scope="module")
def brain() -> torch.Tensor:
    """Two axial slices (160 x 232) of the embedded demo subject, normalised, (2, 1, H, W)."""
    import nibabel as nib

    from mrsr.data.sources import demo_dir

    vol = normalise_volume(
        np.asarray(nib.load(demo_dir() / "seg3d_T1.nii.gz").dataobj, dtype=np.float32)
    )
    mid = vol.shape[2] // 2
    sl = vol[:, :, [mid, mid + 10]].transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(sl))[:, None].float()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma) + 1
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1))


# ------------------------------------------------------------------ HFEN


def test_log_kernel_is_matlab_fspecial_log() -> None:
    k = log_kernel()
    assert k.shape == (15, 15) and k.dtype == torch.float64
    assert abs(k.sum().item()) < 1e-12  # zero sum: a constant image has no response
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert k[7, 7] == k.min() < 0  # negative centre
    # MATLAB normalises the Gaussian by its discrete sum, the formula by 2 pi sigma^2: equal here
    np.testing.assert_allclose(k.numpy(), _np_log_kernel(), rtol=1e-6, atol=1e-9)


def test_log_filter_matches_direct_convolution(brain: torch.Tensor) -> None:
    x = brain[:1]
    got = log_filter(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    ref = _np_log(x[0, 0].numpy(), _np_log_kernel())
    np.testing.assert_allclose(got[0, 0].numpy(), ref, atol=1e-5, rtol=1e-4)
    assert log_filter(torch.full((1, 1, 20, 20), 0.7)).abs().max() < 1e-6


@pytest.mark.parametrize("scale", [2, 4])
def test_hfen_matches_numpy_on_bicubic_demo_slice(brain: torch.Tensor, scale: int) -> None:
    hr = brain
    sr = upsample(degrade(hr, scale), scale)
    got = hfen(sr, hr)
    assert got.shape == (2,) and got.dtype == torch.float32
    for i in range(2):
        ref = _np_hfen(sr[i, 0].numpy(), hr[i, 0].numpy())
        assert 0.05 < ref < 2.0
        assert got[i].item() == pytest.approx(ref, rel=1e-4)


def test_hfen_zero_for_identical_images(brain: torch.Tensor) -> None:
    assert hfen(brain, brain).tolist() == [0.0, 0.0]


def test_hfen_rises_with_blur_and_scale(brain: torch.Tensor) -> None:
    values = [hfen(_blur(brain, s), brain) for s in (0.5, 1.0, 2.0)]
    assert bool((values[0] < values[1]).all() and (values[1] < values[2]).all())
    x2, x4 = (hfen(upsample(degrade(brain, s), s), brain) for s in (2, 4))
    assert bool((x2 < x4).all())


def test_hfen_is_float32_under_autocast(brain: torch.Tensor) -> None:
    sr = upsample(degrade(brain, 2), 2)
    ref = hfen(sr, brain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert log_filter(brain).dtype == torch.float32
        got = hfen(sr, brain)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ foreground-masked PSNR / SSIM


def _square(size: int = 64, lo: int = 20, hi: int = 44, value: float = 0.5) -> torch.Tensor:
    y = torch.zeros(1, 1, size, size)
    y[..., lo:hi, lo:hi] = value
    return y


def test_masked_psnr_by_hand() -> None:
    y = _square(32, 8, 24)  # 16 x 16 = 256 foreground pixels
    x = y.clone()
    x[..., 8:12, 8:24] += 0.1  # error 0.1 on 64 of them
    x[..., 0:2, :] = 0.02  # and 0.02 on 64 background pixels
    mse_fg = 64 * 0.1**2 / 256
    assert psnr_fg(x, y).item() == pytest.approx(10 * math.log10(1 / mse_fg), rel=1e-6)
    mse = (64 * 0.1**2 + 64 * 0.02**2) / 32**2
    assert psnr(x, y).item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    m = SRMetrics()
    m.update(x, y, torch.tensor([0]), torch.tensor([0]))
    out = m.compute()
    assert out["psnr_fg"] == pytest.approx(10 * math.log10(1 / mse_fg), rel=1e-6)
    assert out["psnr_fg_vol"] == pytest.approx(out["psnr_fg"], rel=1e-12)
    # the threshold is strict and on the target: a pixel at FOREGROUND is background
    z = torch.full((1, 1, 16, 16), FOREGROUND)
    assert math.isnan(psnr_fg(z + 0.1, z).item())


def test_masked_metrics_ignore_background_errors() -> None:
    y = _square()
    x = y + 0.01
    x_bg = x.clone()
    x_bg[..., :8, :8] += 0.3  # background only, over 5 px (the SSIM window radius) away
    assert psnr(x_bg, y).item() < psnr(x, y).item() - 1
    assert ssim(x_bg, y).item() < ssim(x, y).item() - 1e-3
    assert psnr_fg(x_bg, y).item() == pytest.approx(psnr_fg(x, y).item(), rel=1e-7)
    assert ssim_fg(x_bg, y).item() == pytest.approx(ssim_fg(x, y).item(), abs=1e-6)
    x_fg = x.clone()
    x_fg[..., 30:34, 30:34] += 0.3
    assert psnr_fg(x_fg, y).item() < psnr_fg(x, y).item() - 1
    assert ssim_fg(x_fg, y).item() < ssim_fg(x, y).item() - 1e-3


def test_masked_ssim_is_ssim_when_all_is_foreground() -> None:
    g = torch.Generator().manual_seed(0)
    y = 0.2 + torch.rand(2, 1, 32, 32, generator=g)
    x = y + 0.05 * torch.randn(2, 1, 32, 32, generator=g)
    torch.testing.assert_close(ssim_fg(x, y), ssim(x, y), rtol=1e-5, atol=1e-6)


def test_all_background_slice_is_left_out() -> None:
    y = torch.cat([_square(), torch.zeros(1, 1, 64, 64)])
    x = y + torch.tensor([0.02, 0.04]).view(2, 1, 1, 1)
    assert math.isnan(psnr_fg(x, y)[1].item()) and math.isnan(ssim_fg(x, y)[1].item())
    one = SRMetrics()
    one.update(x[:1], y[:1], torch.tensor([0]), torch.tensor([0]))
    both = SRMetrics()  # the empty slice in the same volume
    both.update(x, y, torch.tensor([0, 0]), torch.tensor([0, 1]))
    split = SRMetrics()  # the empty slice alone in a second volume
    split.update(x, y, torch.tensor([0, 1]), torch.tensor([0, 0]))
    ref = one.compute()
    for out in (both.compute(), split.compute()):
        assert out["n_slices"] == 2 and out["n_slices_fg"] == 1
        for k in ("psnr_fg", "ssim_fg", "psnr_fg_vol", "ssim_fg_vol"):
            assert out[k] == pytest.approx(ref[k], rel=1e-12), k
            assert out[k] == pytest.approx(
                (psnr_fg if k.startswith("psnr") else ssim_fg)(x, y)[0].item(), rel=1e-5
            )
        assert out["psnr_fg_vol_std"] == 0.0 and out["ssim_fg_vol_std"] == 0.0
        assert out["psnr"] != pytest.approx(ref["psnr"])  # the unmasked mean does count it
    assert split.compute()["n_volumes"] == 2
    empty = SRMetrics()
    empty.update(x[1:], y[1:], torch.tensor([0]), torch.tensor([0]))
    assert math.isnan(empty.compute()["psnr_fg"]) and math.isnan(empty.compute()["ssim_fg_vol"])


# ------------------------------------------------------------------ SRMetrics wiring


def test_srmetrics_hfen_per_slice_and_per_volume(brain: torch.Tensor) -> None:
    hr = brain
    sr = upsample(degrade(hr, 4), 4)
    terms = [_np_hfen_terms(sr[i, 0].numpy(), hr[i, 0].numpy()) for i in range(2)]
    one_vol = SRMetrics()
    one_vol.update(sr, hr, torch.tensor([3, 3]), torch.tensor([0, 1]))
    out = one_vol.compute()
    assert out["hfen"] == pytest.approx(np.mean([math.sqrt(e / y) for e, y in terms]), rel=1e-4)
    hand = math.sqrt(sum(e for e, _ in terms)) / math.sqrt(sum(y for _, y in terms))
    assert out["hfen_vol"] == pytest.approx(hand, rel=1e-4)
    assert out["hfen_vol_std"] == 0.0
    two_vol = SRMetrics()
    two_vol.update(sr, hr, torch.tensor([0, 1]), torch.tensor([0, 0]))
    out2 = two_vol.compute()
    per = [math.sqrt(e / y) for e, y in terms]
    assert out2["hfen_vol"] == pytest.approx(np.mean(per), rel=1e-4)
    assert out2["hfen_vol_std"] == pytest.approx(np.std(per), rel=1e-3)
    # masked per-volume PSNR: summed foreground squared error over the foreground pixel count
    mask = (hr > FOREGROUND).double()
    sse = (((sr.clamp(min=0) - hr).double() ** 2) * mask).sum()
    assert out["psnr_fg_vol"] == pytest.approx(
        10 * math.log10(mask.sum().item() / sse.item()), rel=1e-6
    )
    assert out["ssim_fg_vol"] == pytest.approx(ssim_fg(sr, hr).mean().item(), rel=1e-5)
    # the existing keys are still there, with the new ones
    for k in ("psnr", "ssim", "nmse", "n_slices", "n_volumes"):
        assert k in out
    for k in SUMMARY:
        assert {k, f"{k}_vol", f"{k}_vol_std"} <= out.keys()


def test_summary_names_and_directions() -> None:
    assert SUMMARY == ("psnr", "ssim", "nmse", "hfen", "psnr_fg", "ssim_fg")
    assert set(SUMMARY) == set(HIGHER_IS_BETTER)
    assert (
        HIGHER_IS_BETTER["hfen"] is False
        and HIGHER_IS_BETTER["psnr_fg"]
        and HIGHER_IS_BETTER["ssim_fg"]
    )


# ------------------------------------------------------------------ report


def _job(root: Path, name: str, preset: str, extra: dict) -> None:
    folder = root / name / "sr"
    base = {
        "dataset": "demo",
        "scale": 2,
        "degradation": "bicubic",
        **run_labels(preset, updates=None),
    }
    vals = {
        "psnr": 30.0,
        "ssim": 0.9,
        "nmse": 0.01,
        "psnr_vol": 29.0,
        "ssim_vol": 0.8,
        "nmse_vol": 0.02,
        "psnr_vol_std": 0.5,
        "ssim_vol_std": 0.01,
        "nmse_vol_std": 0.001,
        **extra,
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps([{"method": "sr", **base, **vals}]))


NEW = {
    "hfen": 0.3,
    "hfen_vol": 0.25,
    "hfen_vol_std": 0.012345,
    "psnr_fg": 27.0,
    "psnr_fg_vol": 26.5,
    "psnr_fg_vol_std": 0.75,
    "ssim_fg": 0.7,
    "ssim_fg_vol": 0.69,
    "ssim_fg_vol_std": 0.02,
}


def test_report_old_results_keep_the_old_table(tmp_path: Path) -> None:
    _job(tmp_path, "0", "l1", {})
    rows = tables.table_rows(tables.collect(tmp_path))
    md = tables.to_markdown(rows)
    assert "HFEN" not in md and "fg" not in md
    assert (
        "| SRResNet, L1 (baseline) | — | 1 | 29.00 ± 0.50 | 0.8000 ± 0.0100 | 0.0200 ± 0.0010 |"
        in md
    )
    header = tables.to_csv(rows).splitlines()[0]
    assert header == (
        "dataset,degradation,method,scale,psnr,psnr_std,ssim,ssim_std,nmse,nmse_std,"
        "n_seeds,budget,run"
    )


def test_report_shows_new_metrics_and_a_dash_for_old_runs(tmp_path: Path) -> None:
    _job(tmp_path, "0", "l1", {})
    _job(tmp_path, "1", "paper", NEW)
    rows = tables.table_rows(tables.collect(tmp_path))
    md = tables.to_markdown(rows)
    assert "| x2 HFEN | x2 PSNR-fg | x2 SSIM-fg |" in md
    assert (
        "| full method: L_adv + L_ViT + L_str + L_tex | — | 1 | 29.00 ± 0.50 | 0.8000 ± 0.0100 "
        "| 0.0200 ± 0.0010 "
        "| 0.2500 ± 0.0123 | 26.50 ± 0.75 | 0.6900 ± 0.0200 |"
    ) in md
    assert (
        "| SRResNet, L1 (baseline) | — | 1 | 29.00 ± 0.50 | 0.8000 ± 0.0100 | 0.0200 ± 0.0010 "
        "| — | — | — |" in md
    )
    lines = tables.to_csv(rows).splitlines()
    assert lines[0].endswith(
        "nmse_std,hfen,hfen_std,psnr_fg,psnr_fg_std,ssim_fg,ssim_fg_std,n_seeds,budget,run"
    )
    old = next(line for line in lines if ",l1," in line)
    assert ",0.02,0.001,,,,,,," in old


def test_volume_scores_follow_the_whole_volume_protocol() -> None:
    """PSNR with peak = the reference's maximum over every voxel; HFEN blind to an offset (the
    LoG kernel sums to 0); SSIM 1 only for the reference itself; the same on any slicing axis."""
    import numpy as np

    from mrsr.metrics import volume_scores

    rng = np.random.default_rng(0)
    ref = (rng.random((12, 20, 24)) * 200).astype(np.float32)
    shifted = ref + np.float32(2.0)
    for axis in (0, 1, 2):
        got = volume_scores(shifted, ref, axis)
        assert np.isclose(got["psnr"], 10 * np.log10(float(ref.max()) ** 2 / 4.0), atol=1e-4)
        assert got["hfen"] < 1e-4 and got["ssim"] < 1.0
        same = volume_scores(ref.copy(), ref, axis)
        assert np.isclose(same["ssim"], 1.0, atol=1e-4) and same["hfen"] == 0.0
        assert same["psnr"] == float("inf")


def test_paired_bootstrap_interval() -> None:
    """The mean of the differences left after NaNs, an interval around it that excludes 0 for a
    clear effect and includes it for none, reproducible from its seed."""
    import numpy as np

    from mrsr.metrics.statistics import paired_bootstrap

    rng = np.random.default_rng(0)
    clear = rng.normal(1.0, 0.5, 40)
    clear[5] = np.nan
    got = paired_bootstrap(clear, n=2000)
    assert got["n"] == 39 and np.isclose(got["mean"], np.nanmean(clear))
    assert 0 < got["lo"] < got["mean"] < got["hi"]
    none = rng.normal(0.0, 0.5, 40)
    null = paired_bootstrap(none, n=2000)
    assert null["lo"] < 0 < null["hi"]
    assert paired_bootstrap(clear, n=2000) == got and paired_bootstrap(clear, n=2000, seed=1) != got
