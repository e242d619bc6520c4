"""LR operators (mrsr.data.acquisition), zero-filling and the k-space projection, checked against
constructions written here independently (numpy FFTs and trigonometric sums)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrsr.data.acquisition import (
    MATRIX_OPERATORS,
    Bicubic,
    BlockAverage,
    KSpace,
    Mix,
    MRAcquisition,
    as_degradation,
    degradation_name,
    fixed_acquisition,
    kspace_consistent,
)
from mrsr.data.degrade import kspace_lowpass, kspace_truncate
from mrsr.errors import ConfigError
from mrsr.ops import upsample, zerofill_upsample


def _trig_upsample(v: np.ndarray, s: int) -> np.ndarray:
    """Sinc (trigonometric) interpolation of one row, evaluated at HR positions: LR pixel ``m``
    sits at HR ``m*s + (s-1)/2``; the Nyquist term of an even length is a cosine."""
    m = len(v)
    c = np.fft.fft(v) / m
    t = (np.arange(m * s) - (s - 1) / 2) / s
    out = np.zeros(m * s, complex)
    for k, ck in zip(np.fft.fftfreq(m, 1 / m), c, strict=True):
        if m % 2 == 0 and k == -m / 2:
            out += ck * np.cos(2 * np.pi * k * t / m)
        else:
            out += ck * np.exp(2j * np.pi * k * t / m)
    return out.real


def _lr_spectrum(hr: np.ndarray, s: int) -> np.ndarray:
    """The LR spectrum (FFT order, norm 'forward') of the central band of ``hr``, written with
    numpy's 2D FFT: LR bin k takes HR bin k with the half-pixel ramp; the LR Nyquist bin the
    mean of the two HR bins +-m/2 with their ramps."""
    n0, n1 = hr.shape
    spec = np.fft.fft2(hr) / hr.size
    out = spec
    for axis, n in ((0, n0), (1, n1)):
        m = n // s
        k = np.round(np.fft.fftfreq(m, 1 / m)).astype(int)
        ramp = np.exp(2j * np.pi * k * (s - 1) / 2 / n)
        take = np.take(out, k % n, axis=axis)
        shape = [1, 1]
        shape[axis] = m
        band = take * ramp.reshape(shape)
        if m % 2 == 0:
            plus = np.take(out, [m // 2], axis=axis) * np.exp(
                2j * np.pi * (m // 2) * (s - 1) / 2 / n
            )
            idx = [slice(None)] * 2
            idx[axis] = slice(m // 2, m // 2 + 1)
            band[tuple(idx)] = 0.5 * (band[tuple(idx)] + plus)
        out = band
    return out


def _image(h: int = 48, w: int = 40, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (offset + torch.rand((1, 1, h, w), generator=g, dtype=torch.float64)).float()


# -- zero-filling ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("shape", [(12, 10), (9, 7), (16, 11)])
def test_zerofill_is_trigonometric_interpolation(scale: int, shape: tuple[int, int]) -> None:
    lr = torch.rand((2, 1, *shape), dtype=torch.float64)
    up = zerofill_upsample(lr, scale)
    ref = np.apply_along_axis(_trig_upsample, 0, lr[0, 0].numpy(), scale)
    ref = np.apply_along_axis(_trig_upsample, 1, ref, scale)
    np.testing.assert_allclose(up[0, 0].numpy(), ref, atol=1e-12)
    assert up.shape == (2, 1, shape[0] * scale, shape[1] * scale)


@pytest.mark.parametrize("scale", [2, 4])
def test_zerofill_inverts_truncation_on_the_band(scale: int) -> None:
    """T(Z(lr)) = lr with the whole Nyquist bin, and an HR image holding only frequencies
    strictly inside the LR band comes back exactly from its truncation."""
    lr = torch.rand((3, 1, 12, 8), dtype=torch.float64)
    back = kspace_lowpass(zerofill_upsample(lr, scale, nyquist=1.0), scale)
    torch.testing.assert_close(back.real, lr, atol=1e-12, rtol=0)
    n0, n1 = 12 * scale, 8 * scale
    y, x = torch.meshgrid(
        torch.arange(n0, dtype=torch.float64), torch.arange(n1, dtype=torch.float64), indexing="ij"
    )
    hr = 2 + torch.cos(2 * math.pi * 3 * y / n0) + 0.5 * torch.sin(2 * math.pi * (2 * x / n1))
    hr = hr[None, None].double()
    again = zerofill_upsample(kspace_truncate(hr, scale), scale)
    torch.testing.assert_close(again, hr, atol=1e-10, rtol=0)


def test_zerofill_beats_bicubic_on_kspace_lr_of_a_real_slice() -> None:
    from mrsr.data.degrade import normalise_volume
    from mrsr.data.readers import read_nifti
    from mrsr.data.sources import demo_dir

    vol = normalise_volume(read_nifti(demo_dir() / "seg3d_T1.nii.gz").data)
    hr = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol[:, :, 70:74], 2, 0)))[:, None]
    hr = hr[..., : hr.shape[-2] // 2 * 2, : hr.shape[-1] // 2 * 2]
    lr = kspace_truncate(hr, 2)
    err = {m: float((upsample(lr, 2, m) - hr).pow(2).mean()) for m in ("bicubic", "zerofill")}
    assert err["zerofill"] < 0.9 * err["bicubic"], err  # 0.7 dB here


# -- operators -------------------------------------------------------------------------------


def test_builtin_operators_and_names() -> None:
    hr = _image()
    assert torch.equal(Bicubic()(hr, 2), upsample_free_bicubic(hr))
    assert torch.equal(KSpace()(hr, 2), kspace_truncate(hr, 2))
    torch.testing.assert_close(
        BlockAverage()(hr, 2), hr.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
    )
    assert as_degradation("kspace").name == "kspace" and as_degradation(None).name == "bicubic"
    cfg = {"_target_": "mrsr.data.acquisition.MRAcquisition", "name": "mri", "noise": [0, 0.02]}
    assert isinstance(as_degradation(cfg), MRAcquisition) and degradation_name(cfg) == "mri"
    with pytest.raises(ConfigError, match="data.degradation='gauss' is unknown"):
        as_degradation("gauss")
    with pytest.raises(ConfigError, match="degradation.windows has unknown"):
        MRAcquisition(windows={"kaiser": 1.0})
    with pytest.raises(ConfigError, match="degradation.noise"):
        MRAcquisition(noise=[0.1, 0.0])
    with pytest.raises(ConfigError, match="does not divide by scale"):
        MRAcquisition()(_image(47, 40), 2)


def upsample_free_bicubic(hr: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        hr, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False
    ).clamp(min=0)


@pytest.mark.parametrize("scale", [2, 4])
def test_acquisition_without_draws_is_kspace_truncation(scale: int) -> None:
    hr = _image(seed=1)
    op = MRAcquisition(extent=(1, 1), partial_fourier_p=0.0, noise_none=1.0)
    torch.testing.assert_close(op(hr, scale), kspace_truncate(hr, scale), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        np.abs(
            np.fft.ifft2(_lr_spectrum(hr[0, 0].double().numpy(), scale))
            * (48 // scale)
            * (40 // scale)
        ),
        kspace_truncate(hr, scale)[0, 0].numpy(),
        atol=1e-6,
    )


@pytest.mark.parametrize("window", ["hamming", "hann"])
def test_window_weights_the_lr_spectrum(window: str) -> None:
    """On an image that stays positive after filtering (magnitude = real part), the LR spectrum
    is the truncated one times the window, bin by bin."""
    hr = _image(offset=10.0, seed=2)
    lr = fixed_acquisition("w", window=window)(hr, 2)[0, 0].double().numpy()
    plain = _lr_spectrum(hr[0, 0].double().numpy(), 2)
    got = np.fft.fft2(lr) / lr.size
    a0 = 0.54 if window == "hamming" else 0.5

    def win(m: int) -> np.ndarray:
        u = np.abs(np.round(np.fft.fftfreq(m, 1 / m)) / (m / 2))
        return a0 + (1 - a0) * np.cos(np.pi * u)

    want = plain * win(lr.shape[0])[:, None] * win(lr.shape[1])[None, :]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_narrower_extent_and_partial_fourier_empty_their_bins() -> None:
    op = fixed_acquisition("pf", partial_fourier=0.625)
    settings = op.draw(64, torch.Generator().manual_seed(0))
    mask = op.mask((24, 20), settings, "cpu")
    for i in range(64):
        axis, side = int(settings["pf_axis"][i]), int(settings["pf_side"][i])
        m = (24, 20)[axis]
        u = np.round(np.fft.fftfreq(m, 1 / m)) / (m / 2)
        line = mask[i, 0].amax(dim=1 - axis).numpy()
        np.testing.assert_array_equal(line > 0, side * u >= 1 - 2 * 0.625 - 1e-9)
    narrow = fixed_acquisition("e", extent=0.5)
    m = narrow.mask((24, 20), narrow.draw(1), "cpu")[0, 0]
    u0 = np.abs(np.round(np.fft.fftfreq(24, 1 / 24)) / 12)
    np.testing.assert_array_equal(m.amax(dim=1).numpy() > 0, u0 <= 0.5)


def test_noise_before_the_magnitude_has_rician_statistics() -> None:
    sigma = 0.04
    op = fixed_acquisition("n", noise=sigma)
    g = torch.Generator().manual_seed(3)
    dark = op(torch.zeros(8, 1, 64, 64), 2, g).double()  # Rayleigh: mean sigma sqrt(pi/2)
    assert dark.mean().item() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    bright = op(torch.full((8, 1, 64, 64), 5.0), 2, g).double()  # ~Gaussian of sigma
    assert bright.std().item() == pytest.approx(sigma, rel=0.03)
    assert bright.mean().item() == pytest.approx(5.0, abs=0.01)


def test_draws_are_deterministic_given_a_generator() -> None:
    op = as_degradation("bicubic")
    mri = MRAcquisition(
        windows={"none": 1, "hamming": 1, "hann": 1, "tukey": 1, "fermi": 1},
        bias_field=(0.0, 0.1),
        bias_field_p=0.5,
        gamma=(0.9, 1.1),
    )
    hr = torch.rand(6, 1, 32, 32)
    for o in (op, mri, Mix([mri, op], [0.7, 0.3])):
        a = o.pair(hr, 2, torch.Generator().manual_seed(5))
        b = o.pair(hr, 2, torch.Generator().manual_seed(5))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = mri(hr, 2, torch.Generator().manual_seed(6))
    assert not torch.equal(c, mri(hr, 2, torch.Generator().manual_seed(5)))
    lr, hr2 = mri.pair(hr, 2, torch.Generator().manual_seed(5))
    assert not torch.equal(hr2, hr) and lr.shape == (6, 1, 16, 16)


def test_mix_draws_its_components_by_weight() -> None:
    hr = _image(32, 32).expand(400, 1, 32, 32).contiguous()
    mix = Mix(["bicubic", "kspace"], [0.25, 0.75])
    lr = mix(hr, 2, torch.Generator().manual_seed(0))
    is_bicubic = (lr - Bicubic()(hr[:1], 2)).flatten(1).abs().amax(1) < 1e-6
    assert 0.18 < is_bicubic.float().mean().item() < 0.32
    assert mix.nominal == "kspace" and Mix(["bicubic"]).nominal == "bicubic"


def test_matrix_operators_build() -> None:
    hr = _image(32, 32)
    for name, make in MATRIX_OPERATORS.items():
        op = make()
        assert op(hr, 2, torch.Generator().manual_seed(0)).shape == (1, 1, 16, 16), name


# -- k-space data consistency ----------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_kspace_consistent_keeps_the_band_and_the_detail(scale: int) -> None:
    sr = torch.rand(2, 1, 32, 24, dtype=torch.float64)
    lr = torch.rand(2, 1, 32 // scale, 24 // scale, dtype=torch.float64)
    out = kspace_consistent(sr, lr, scale)
    torch.testing.assert_close(kspace_lowpass(out, scale).real, lr, atol=1e-10, rtol=0)
    # what changed lies inside the band: its truncation-then-zero-fill is itself
    change = out - sr
    inside = zerofill_upsample(kspace_lowpass(change, scale).real, scale, nyquist=1.0)
    torch.testing.assert_close(change, inside, atol=1e-10, rtol=0)


# -- LR made on the fly ----------------------------------------------------------------------


def _demo(degradation) -> object:
    from mrsr.data.datamodule import DemoDataModule

    dm = DemoDataModule(
        scale=2, degradation=degradation, patch_size=32, batch_size=4, contrasts=["T1"]
    )
    dm.setup("fit")
    return dm


def test_training_lr_is_drawn_per_sample_and_evaluation_lr_is_fixed() -> None:
    from mrsr.data.resumable import SeededDataset

    mri = fixed_acquisition("noisy", noise=0.02)
    dm = _demo(mri)
    train = SeededDataset(dm.datasets["train"])
    a, b, c = train[(5, 11)], train[(5, 11)], train[(5, 12)]
    assert torch.equal(a.lr, b.lr) and torch.equal(a.hr, b.hr)  # same (seed, epoch, position)
    assert not torch.equal(a.lr, c.lr)  # another draw (and patch)
    # the pair is exact: the LR of the patch is the operator's LR of the whole slice, cropped
    val = dm.datasets["val"]
    v1 = val[3].lr
    again = _demo(mri).datasets["val"][3].lr
    assert torch.equal(v1, again)  # validation LR: drawn once from a fixed seed
    hr = val[3].hr
    noise_free = kspace_truncate(hr[None], 2)[0]
    resid = (v1 - noise_free)[noise_free > 0.5]
    assert resid.std().item() == pytest.approx(0.02, rel=0.15)  # the drawn noise is there
    # training views never draw the fixed-seed LR: only their HR is cached
    assert dm.store.get(*train.dataset.views[0], lr=False)[1] is None
    assert dm.store.get(*val.views[0], lr=False)[1] is not None


def test_deterministic_operators_keep_the_cached_lr() -> None:
    from mrsr.data.resumable import SeededDataset

    dm = _demo("kspace")
    ds = dm.datasets["train"]
    assert not dm.operator.random
    hr_vol, lr_vol = dm.store.get(*ds.views[ds.index[0][0]])
    assert torch.equal(lr_vol, kspace_truncate(hr_vol, 2))
    assert torch.equal(SeededDataset(ds)[(0, 1)].lr, SeededDataset(ds)[(0, 1)].lr)


def test_degradation_group_composes_and_builds(make_cfg) -> None:
    from mrsr.building import build_datamodule

    for name, kind in (
        ("bicubic", Bicubic),
        ("kspace", KSpace),
        ("mri", MRAcquisition),
        ("mix", Mix),
    ):
        cfg = make_cfg("stage=sr", f"degradation={name}")
        assert cfg.data.degradation.name == name
        assert isinstance(build_datamodule(cfg).operator, kind)
    legacy = make_cfg("stage=sr", "data.degradation=kspace")  # the name alone still works
    assert isinstance(build_datamodule(legacy).store.operator, KSpace)


def test_random_operators_cache_only_hr_on_disk(tmp_path) -> None:
    from mrsr.data.sources import list_demo
    from mrsr.data.store import VolumeStore

    ref = next(r for r in list_demo(["T1"]) if r.subject == "stroke")
    op = fixed_acquisition("noisy", noise=0.02)
    first = VolumeStore(2, op, cache_dir=tmp_path)
    hr, lr = first.get(ref)
    (entry,) = tmp_path.glob("*.npz")
    with np.load(entry) as z:
        assert set(z.files) == {"hr"}
    hr2, lr2 = VolumeStore(2, op, cache_dir=tmp_path).get(ref)  # from the disk entry
    assert torch.equal(hr, hr2) and torch.equal(lr, lr2)  # the same fixed-seed draws
