"""Data modules, degradations and metrics, checked against values computed here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrsr.data.datamodule import DemoDataModule, FastMRIDataModule, IXIDataModule
from mrsr.data.degrade import degrade, normalise_volume
from mrsr.data.readers import read_fastmri
from mrsr.data.sources import list_fastmri, list_ixi, split_by_subject, split_counts
from mrsr.errors import DataError
from mrsr.metrics import SRMetrics, nmse, psnr, ssim
from mrsr.ops import upsample
from tests.conftest import make_fastmri, make_fastmri_file, make_ixi


def _ixi(root: Path, **kw) -> IXIDataModule:
    kw.setdefault("split", (3, 2, 1))
    kw.setdefault("crop", None)
    kw.setdefault("patch_size", 16)
    kw.setdefault("batch_size", 4)
    dm = IXIDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def _fastmri(root: Path, **kw) -> FastMRIDataModule:
    kw.setdefault("split", (4, 1, 1))
    kw.setdefault("fastmri_crop", (32, 32))
    kw.setdefault("patch_size", 16)
    kw.setdefault("batch_size", 4)
    dm = FastMRIDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def _subjects(dm) -> dict[str, set[str]]:
    return {k: {r.name.split("-")[0] for r in ds.refs} for k, ds in dm.datasets.items()}


# ------------------------------------------------------------------ splits


def test_ixi_split_disjoint_by_subject_and_stable(tmp_path: Path) -> None:
    root = make_ixi(tmp_path / "IXI", n_subjects=8, contrasts=("T1", "T2"), shape=(20, 20, 6))
    refs = list_ixi(root, ["T1", "T2"])
    a = split_by_subject(refs, (5, 2, 1), seed=1)
    b = split_by_subject(refs, (5, 2, 1), seed=1)
    assert {k: [r.name for r in v] for k, v in a.items()} == {
        k: [r.name for r in v] for k, v in b.items()
    }
    subj = {k: {r.subject for r in v} for k, v in a.items()}
    assert [len(subj[k]) for k in ("train", "test", "val")] == [5, 2, 1]
    assert not (
        subj["train"] & subj["test"] or subj["train"] & subj["val"] or subj["test"] & subj["val"]
    )
    # both contrasts of a subject go to the same split
    for split, rs in a.items():
        for r in rs:
            assert {x.contrast for x in rs if x.subject == r.subject} == {"T1", "T2"}, split
    others = [split_by_subject(refs, (5, 2, 1), seed=s) for s in range(2, 6)]
    assert any({r.subject for r in o["test"]} != subj["test"] for o in others)


def test_ixi_datamodule_split_disjoint(ixi_dir: Path) -> None:
    dm1, dm2 = _ixi(ixi_dir, seed=3), _ixi(ixi_dir, seed=3)
    s1, s2 = _subjects(dm1), _subjects(dm2)
    assert s1 == s2
    assert sum(len(v) for v in s1.values()) == 6
    assert not (s1["train"] & s1["val"] or s1["train"] & s1["test"] or s1["val"] & s1["test"])


@pytest.mark.parametrize(
    ("n", "wanted", "expected"),
    [
        (600, (500, 70, 6), (500, 70, 6)),
        (576, (500, 70, 6), (500, 70, 6)),
        (10, (500, 70, 6), (8, 1, 1)),
        (100, (500, 70, 6), (87, 12, 1)),
        (3, (500, 70, 6), (1, 1, 1)),
        (6, (3, 2, 1), (3, 2, 1)),
    ],
)
def test_split_counts_rule(n: int, wanted, expected) -> None:
    got = split_counts(n, wanted)
    assert got == expected
    assert sum(got) <= n and min(got) >= 1


def test_split_counts_too_few() -> None:
    with pytest.raises(DataError, match="at least 3"):
        split_counts(2, (500, 70, 6))


# ------------------------------------------------------------------ shapes and ranges


def _check_pairs(dm, scale: int) -> None:
    for split in ("train", "val", "test"):
        loader = dm.train_dataloader() if split == "train" else getattr(dm, f"{split}_dataloader")()
        lr, hr, meta = next(iter(loader))
        assert lr.ndim == 4 and hr.ndim == 4 and lr.shape[1] == hr.shape[1] == 1
        assert hr.shape[-2] == lr.shape[-2] * scale and hr.shape[-1] == lr.shape[-1] * scale
        assert hr.shape[-2] % scale == 0 and hr.shape[-1] % scale == 0
        assert lr.dtype == hr.dtype == torch.float32
        for x in (lr, hr):  # normalised: >= 0, robust max 1, the brightest voxels a little above
            assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 5
        assert hr.max() > 0.3  # not blank
        if split == "train":
            assert hr.shape[-2:] == (dm.patch_size, dm.patch_size)
        assert len(meta.volume) == lr.shape[0] and meta.label.shape == (lr.shape[0],)


@pytest.mark.parametrize("degradation", ["bicubic", "kspace"])
@pytest.mark.parametrize("scale", [2, 4])
def test_ixi_pairs(ixi_dir: Path, scale: int, degradation: str) -> None:
    dm = _ixi(ixi_dir, scale=scale, degradation=degradation, crop=(38, 42, None))
    _check_pairs(dm, scale)
    hr, _ = dm.store.get(dm.datasets["test"].refs[0])
    assert hr.shape[-2:] == (38 - 38 % scale, 42 - 42 % scale)


@pytest.mark.parametrize("degradation", ["bicubic", "kspace"])
@pytest.mark.parametrize("scale", [2, 4])
def test_fastmri_pairs(fastmri_dir: Path, scale: int, degradation: str) -> None:
    dm = _fastmri(fastmri_dir, scale=scale, degradation=degradation, fastmri_crop=(30, 30))
    _check_pairs(dm, scale)
    assert dm.classes == ["fastMRI-PD", "fastMRI-PDFS"]


@pytest.mark.parametrize("degradation", ["bicubic", "kspace"])
@pytest.mark.parametrize("scale", [2, 4])
def test_demo_pairs(scale: int, degradation: str) -> None:
    dm = DemoDataModule(scale=scale, degradation=degradation, patch_size=32, batch_size=4)
    dm.setup()
    _check_pairs(dm, scale)


def test_hr_size_divisible_by_scale(tmp_path: Path) -> None:
    root = make_ixi(tmp_path / "IXI", n_subjects=3, contrasts=("T1",), shape=(37, 43, 6))
    dm = _ixi(root, split=(1, 1, 1), scale=4)
    hr, lr = dm.store.get(dm.datasets["test"].refs[0])
    assert hr.shape[-2:] == (36, 40) and lr.shape[-2:] == (9, 10)


def test_validation_deterministic(ixi_dir: Path) -> None:
    dm1, dm2 = _ixi(ixi_dir, seed=0), _ixi(ixi_dir, seed=0)
    for loader in (dm1.val_dataloader(), dm2.val_dataloader(), dm1.val_dataloader()):
        batches = [(lr.clone(), hr.clone()) for lr, hr, _ in loader]
        if "ref" not in locals():
            ref = batches
        assert len(batches) == len(ref)
        for (a, b), (c, d) in zip(batches, ref, strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)


@pytest.mark.parametrize("degradation", ["bicubic", "kspace"])
def test_training_patches_are_paired(ixi_dir: Path, degradation: str) -> None:
    torch.manual_seed(0)
    dm = _ixi(ixi_dir, scale=2, degradation=degradation, patch_size=16, flips=True)
    ds = dm.datasets["train"]
    errs, shifted = [], []
    for i in range(0, len(ds), max(1, len(ds) // 20)):
        lr, hr, _ = ds[i]
        if hr.mean() < 0.1:
            continue
        down = F.interpolate(hr[None], scale_factor=0.5, mode="area")[0]
        errs.append((down - lr).abs().mean().item())
        shifted.append((down - lr.roll(3, -1)).abs().mean().item())
    assert len(errs) >= 5
    # matches its own downsampled HR far better than a misaligned one
    assert np.mean(errs) < 0.05
    assert np.mean(errs) < 0.6 * np.mean(shifted)


# ------------------------------------------------------------------ fastMRI


@pytest.mark.parametrize("size", [(48, 40), (47, 41)])
def test_kspace_reconstruction_matches_stored_rss(tmp_path: Path, size) -> None:
    path = make_fastmri_file(tmp_path / "file1.h5", size=size, crop=(32, 32), seed=5)
    from_k = read_fastmri(path, "kspace", (32, 32))
    stored = read_fastmri(path, "reconstruction_rss", (32, 32))
    assert from_k.shape == stored.shape == (4, 32, 32)
    np.testing.assert_allclose(from_k, stored, rtol=1e-4, atol=1e-5 * stored.max())


def test_kspace_only_file_used_when_no_reconstruction(tmp_path: Path) -> None:
    root = tmp_path / "fm"
    root.mkdir()
    path = make_fastmri_file(root / "file1.h5", store_recon=False)
    info_src = read_fastmri(path, "auto", (32, 32))
    assert info_src.shape == (4, 32, 32)
    path2 = make_fastmri_file(root / "file2.h5")
    np.testing.assert_allclose(
        info_src, read_fastmri(path2, "auto", (32, 32)), rtol=1e-4, atol=1e-5
    )


def test_fastmri_acquisition_filter(fastmri_dir: Path) -> None:
    pd = list_fastmri(fastmri_dir, ["PD"])
    pdfs = list_fastmri(fastmri_dir, ["PDFS"])
    assert [r.name for r in pd] == ["file1000", "file1002", "file1004"]
    assert [r.name for r in pdfs] == ["file1001", "file1003", "file1005"]
    assert {r.contrast for r in pd} == {"PD"} and {r.contrast for r in pdfs} == {"PDFS"}
    dm = _fastmri(fastmri_dir, contrasts=["PD"], split=(1, 1, 1))
    assert dm.classes == ["fastMRI-PD"]
    assert all(r.contrast == "PD" for ds in dm.datasets.values() for r in ds.refs)


# ------------------------------------------------------------------ demo


def _covered_slices(dm, ds, primary: int = 2) -> dict[str, set[int]]:
    """Absolute indices along the primary slicing axis that a dataset's slices touch."""
    from mrsr.data.store import slab_range

    out: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}  # slices along the primary axis, per volume (read once)
    for v, s in ds.index:
        ref, axis, slab = ds.views[v]
        if ref.name not in sizes:
            sizes[ref.name] = dm.store.get(ref)[0].shape[0]
        n = sizes[ref.name]
        rng = slab_range(n, slab) if slab is not None else slice(0, n)
        hit = {rng.start + s} if axis in (None, primary) else set(range(rng.start, rng.stop))
        out.setdefault(ref.name, set()).update(hit)
    return out


@pytest.mark.parametrize("train_axes", [None, [0, 1, 2]])
def test_demo_split(train_axes) -> None:
    """No training slice, along any axis, touches the validation slab or the 2-slice gap."""
    dm = DemoDataModule(scale=2, patch_size=32, train_axes=train_axes)
    dm.setup()
    test, val, train = dm.datasets["test"], dm.datasets["val"], dm.datasets["train"]
    assert [r.subject for r in test.refs] == ["seg3d"]
    assert all(r.subject != "seg3d" for r in train.refs + val.refs)
    assert {v.axis for v in train.views} == set(train_axes or [2])
    train_z, val_z = _covered_slices(dm, train), _covered_slices(dm, val)
    assert set(val_z) == set(train_z) == {"stroke_T1", "stroke_T2", "stroke_FLAIR"}
    for name, vs in val_z.items():
        assert min(abs(t - v) for t in train_z[name] for v in vs) > 2
    # a view of a slab holds exactly those slices of the whole normalised volume
    ref, axis, slab = next(v for v in train.views if v.slab is not None and v.slab[0] > 0)
    whole = np.moveaxis(dm.store.read_slices(ref), 0, 2)  # back to (x, y, z)
    from mrsr.data.store import slab_range

    part = whole[..., slab_range(whole.shape[2], slab)]
    np.testing.assert_array_equal(dm.store.read_slices(ref, axis, slab), np.moveaxis(part, axis, 0))


# ------------------------------------------------------------------ metrics


def _np_psnr(x: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(1.0 / np.mean((x.astype(np.float64) - y) ** 2))


def _np_nmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((y.astype(np.float64) - x) ** 2) / np.sum(y.astype(np.float64) ** 2))


def _np_ssim(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Reference SSIM (Wang et al. 2004), Gaussian window, data range 1, averaged over the
    whole image with reflect padding at the borders (the torchmetrics convention)."""
    t = np.arange(win) - (win - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()

    def filt(a: np.ndarray) -> np.ndarray:
        a = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 0, a)
        return np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, a)

    pad = win // 2
    x = np.pad(x.astype(np.float64), pad, mode="reflect")
    y = np.pad(y.astype(np.float64), pad, mode="reflect")
    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def _pair(seed: int, n: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 1, size, size, generator=g)
    x = (y + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return x, y


def test_metric_directions() -> None:
    """PSNR and SSIM rise with quality, NMSE (an error) falls: the declared directions agree."""
    from mrsr.metrics import HIGHER_IS_BETTER

    y = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    scores = []
    for noise in (0.2, 0.05):
        m = SRMetrics()
        m.update(
            (y + noise * torch.randn_like(y)).clamp(min=0),
            y,
            torch.tensor([0, 0]),
            torch.tensor([0, 1]),
        )
        scores.append(m.compute())
    for name, higher in HIGHER_IS_BETTER.items():
        assert (scores[1][name] > scores[0][name]) == higher, name
        assert (scores[1][f"{name}_vol"] > scores[0][f"{name}_vol"]) == higher, name
    assert SRMetrics.higher_is_better is None and HIGHER_IS_BETTER["nmse"] is False


def test_psnr_nmse_match_numpy() -> None:
    x, y = _pair(0)
    for i in range(3):
        xi, yi = x[i, 0].numpy(), y[i, 0].numpy()
        assert psnr(x, y)[i].item() == pytest.approx(_np_psnr(xi, yi), abs=1e-3)
        assert nmse(x, y)[i].item() == pytest.approx(_np_nmse(xi, yi), rel=1e-4)


def test_ssim_matches_reference() -> None:
    x, y = _pair(1, size=40)
    got = ssim(x, y)
    for i in range(3):
        assert got[i].item() == pytest.approx(_np_ssim(x[i, 0].numpy(), y[i, 0].numpy()), abs=1e-4)
    assert ssim(y, y).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    # a known value: a constant offset c only changes the luminance term
    a = torch.full((1, 1, 24, 24), 0.5)
    b = torch.full((1, 1, 24, 24), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-5)


def _metrics_reference(preds, targets, vols, slices) -> dict[str, float]:
    seen, rows = set(), []
    for p, t, v, s in zip(preds, targets, vols, slices, strict=True):
        if (v, s) in seen:
            continue
        seen.add((v, s))
        rows.append((p.numpy(), t.numpy(), v))
    out = {
        "psnr": np.mean([_np_psnr(p, t) for p, t, _ in rows]),
        "ssim": np.mean([_np_ssim(p, t) for p, t, _ in rows]),
        "nmse": np.mean([_np_nmse(p, t) for p, t, _ in rows]),
        "n_slices": len(rows),
    }
    per = {}
    for v in sorted({r[2] for r in rows}):
        ps = [r for r in rows if r[2] == v]
        sse = sum(np.sum((p.astype(np.float64) - t) ** 2) for p, t, _ in ps)
        npx = sum(p.size for p, _, _ in ps)
        y2 = sum(np.sum(t.astype(np.float64) ** 2) for _, t, _ in ps)
        per[v] = (10 * math.log10(npx / sse), np.mean([_np_ssim(p, t) for p, t, _ in ps]), sse / y2)
    for k, name in enumerate(("psnr", "ssim", "nmse")):
        vals = np.array([per[v][k] for v in per])
        out[f"{name}_vol"] = vals.mean()
        out[f"{name}_vol_std"] = vals.std()
    out["n_volumes"] = len(per)
    return out


def test_srmetrics_dedup_and_per_volume() -> None:
    x, y = _pair(2, n=6, size=24)
    vols = [0, 0, 0, 1, 1, 2]
    slices = [0, 1, 2, 0, 1, 0]
    m = SRMetrics()
    m.update(x[:4], y[:4], torch.tensor(vols[:4]), torch.tensor(slices[:4]))
    # (0,2), (1,0) repeated
    m.update(x[2:], y[2:], torch.tensor(vols[2:]), torch.tensor(slices[2:]))
    m.update(x[:1], y[:1], torch.tensor([0]), torch.tensor([0]))
    got = m.compute()
    ref = _metrics_reference(list(x[:, 0]), list(y[:, 0]), vols, slices)
    assert got["n_slices"] == 6 and got["n_volumes"] == 3
    for k in ("psnr", "nmse", "psnr_vol", "nmse_vol", "psnr_vol_std", "nmse_vol_std"):
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k
    for k in ("ssim", "ssim_vol", "ssim_vol_std"):
        assert got[k] == pytest.approx(ref[k], abs=1e-4), k
    # the duplicates really were dropped: counting them would change the mean
    m2 = SRMetrics()
    m2.update(x, y, torch.arange(6), torch.zeros(6, dtype=torch.long))
    assert m2.compute()["n_volumes"] == 6


def test_srmetrics_keep_the_top_and_clamp_at_zero() -> None:
    """Values above the robust maximum (1) are scored as they are; below 0 they are clamped."""
    _, y = _pair(3, n=2)
    bright = y * 3.0  # a target whose brightest voxels lie far above 1
    m = SRMetrics()
    m.update(bright.clamp(0, 1), bright, torch.tensor([0, 0]), torch.tensor([0, 1]))
    ref = _metrics_reference(list(bright.clamp(0, 1)[:, 0]), list(bright[:, 0]), [0, 0], [0, 1])
    assert m.compute()["psnr"] == pytest.approx(ref["psnr"], rel=1e-5)
    assert m.compute()["psnr"] < 40  # clipping the top is an error, not a perfect score
    m2 = SRMetrics()
    m2.update(y - 5.0, y, torch.tensor([0, 0]), torch.tensor([0, 1]))
    ref = _metrics_reference(list(torch.zeros_like(y)[:, 0]), list(y[:, 0]), [0, 0], [0, 1])
    assert m2.compute()["psnr"] == pytest.approx(ref["psnr"], rel=1e-5)


def _bandlimited_at(x: np.ndarray, scale: int) -> np.ndarray:
    """Reference k-space LR: the HR image low-passed to the LR band (half weight on the two
    HR bins that fold onto the LR Nyquist bin), evaluated by direct sums at the LR pixel
    centres m*scale + (scale-1)/2."""
    spec = np.fft.fft2(x.astype(np.float64))
    mats = []
    for n in x.shape:
        m = n // scale
        k = np.fft.fftfreq(n, 1 / n)
        weight = np.where(np.abs(k) < m / 2, 1.0, np.where(np.abs(k) == m / 2, 0.5, 0.0))
        pos = np.arange(m) * scale + (scale - 1) / 2
        mats.append(np.exp(2j * np.pi * np.outer(pos, k) / n) * weight / n)
    return np.abs(mats[0] @ spec @ mats[1].T)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(32, 32), (24, 40), (36, 20)])
def test_degrade_matches_definition(scale: int, size: tuple[int, int]) -> None:
    """k-space truncation equals the band-limited image sampled at the LR pixel centres."""
    x = torch.rand(1, 1, *size)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    lr = degrade(x, scale, "kspace")[0, 0].numpy()
    np.testing.assert_allclose(lr, _bandlimited_at(x[0, 0].numpy(), scale), atol=1e-5)


@pytest.mark.parametrize("kind", ["bicubic", "kspace"])
@pytest.mark.parametrize("scale", [2, 4])
def test_degradations_commute_with_flips_and_transpose(kind: str, scale: int) -> None:
    """Flip/transpose augmentation of (LR, HR) pairs gives pairs of the same degradation."""
    x = torch.rand(2, 1, 24, 40)
    lr = degrade(x, scale, kind)
    for op in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)):
        torch.testing.assert_close(degrade(op(x), scale, kind), op(lr), atol=1e-6, rtol=0)


def _brain_slices(n: int) -> torch.Tensor:
    """``n`` axial 96x96 slices of the embedded test subject (normalised), float64."""
    import nibabel as nib

    from mrsr.data.sources import demo_dir

    vol = normalise_volume(
        np.asarray(nib.load(demo_dir() / "seg3d_T1.nii.gz").dataobj, dtype=np.float32)
    )
    mid = [d // 2 for d in vol.shape]
    sl = vol[mid[0] - 48 : mid[0] + 48, mid[1] - 48 : mid[1] + 48, mid[2] : mid[2] + n]
    return torch.from_numpy(np.ascontiguousarray(sl.transpose(2, 0, 1)))[:, None].double()


def _fourier_shift(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """``x`` moved by a sub-pixel (dy, dx) (periodic, band-limited)."""
    ky = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)[None, :]
    ramp = torch.exp(-2j * torch.pi * (ky * dy + kx * dx))
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * ramp).real


@pytest.mark.parametrize("scale", [2, 4])
def test_kspace_lr_is_on_the_image_grid(scale: int) -> None:
    """Bicubic up-sampling of the k-space LR lines up with the HR: of the sub-pixel shifts
    of the HR, the unshifted one fits best (the old off-grid LR was half an LR pixel off)."""
    hr = _brain_slices(1)
    up = upsample(degrade(hr, scale, "kspace"), scale).double()
    shifts = [-0.5, -0.25, 0.0, 0.25, 0.5]
    err = {
        (dy, dx): (up - _fourier_shift(hr, dy, dx)).pow(2).mean().item()
        for dy in shifts
        for dx in shifts
    }
    assert min(err, key=err.get) == (0.0, 0.0)
    # and it is as close to the HR as bicubic up-sampling of the image-space LR (not 5 dB below)
    bic = (upsample(degrade(hr, scale, "bicubic"), scale).double() - hr).pow(2).mean().item()
    assert err[(0.0, 0.0)] < 1.5 * bic


@pytest.mark.parametrize("scale", [2, 4])
def test_kspace_keeps_the_mean(scale: int) -> None:
    """The complex LR keeps the mean exactly; the magnitude adds only the rectified ringing."""
    from mrsr.data.degrade import kspace_lowpass

    hr = _brain_slices(2).float()
    low = kspace_lowpass(hr, scale)
    torch.testing.assert_close(
        low.real.mean((-2, -1)), hr.double().mean((-2, -1)), atol=1e-9, rtol=0
    )
    mag = degrade(hr, scale, "kspace")
    assert torch.allclose(mag.mean((-2, -1)), hr.mean((-2, -1)), rtol=0.03)


def test_disk_cache_is_keyed_by_mtime_and_settings(tmp_path, ixi_dir):
    """Preprocessed volumes are cached outside the data folder and rebuilt when stale."""
    import os

    from mrsr.data.sources import list_ixi
    from mrsr.data.store import VolumeStore

    ref = list_ixi(ixi_dir, ["T1"])[0]
    before = {p.name: p.stat().st_mtime_ns for p in ixi_dir.iterdir()}
    cache = tmp_path / "cache"
    store = VolumeStore(2, cache_dir=cache)
    hr, lr = store.get(ref)
    entries = list(cache.glob("*.npz"))
    assert len(entries) == 1

    fresh = VolumeStore(2, cache_dir=cache)
    fresh._build = None  # a cache hit must not rebuild
    hr2, lr2 = fresh.get(ref)
    assert torch.equal(hr, hr2) and torch.equal(lr, lr2)

    assert VolumeStore(4, cache_dir=cache).disk_key(ref) != store.disk_key(ref)  # other settings
    st = ref.path.stat()
    os.utime(ref.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    VolumeStore(2, cache_dir=cache).get(ref)
    assert len(list(cache.glob("*.npz"))) == 2
    after = {p.name: p.stat().st_mtime_ns for p in ixi_dir.iterdir()}
    assert set(after) == set(before)  # nothing written into the data folder


def test_multi_axis_training_skips_parts_too_thin_to_slice_across() -> None:
    """A validation slab at the end of the volume leaves an empty part: it is skipped."""
    dm = DemoDataModule(
        scale=2, patch_size=16, contrasts=["T1"], val_slab=[0.5, 0.995], train_axes=[0, 1, 2]
    )
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) > 0 and {train.views[v].axis for v, _ in train.index} == {0, 1, 2}
    assert all(train.views[v].slab[1] <= 0.5 for v, _ in train.index)


def _official_fastmri(
    root: Path, train: int, val: int, prefix: str = "", challenges=("singlecoil",)
) -> Path:
    """The official fastMRI folders as users extract them (a test folder without ground truth
    too)."""
    for ch in challenges:
        for split, n, base in (("train", train, 1000), ("val", val, 2000)):
            d = root / f"{prefix}{ch}_{split}"
            d.mkdir(parents=True)
            for i in range(n):
                make_fastmri_file(
                    d / f"file{base + i}.h5", ("CORPD_FBK", "CORPDFS_FBK")[i % 2], seed=i
                )
        test = root / f"{prefix}{ch}_test_v2"
        test.mkdir()
        make_fastmri_file(test / "file3000.h5", store_recon=False)
    return root


@pytest.mark.parametrize("prefix", ["", "knee_"])
def test_fastmri_official_folders(tmp_path: Path, prefix: str) -> None:
    """Train and validation come from *_train (held out by file), the test split from *_val."""
    root = _official_fastmri(tmp_path / "knee", train=5, val=3, prefix=prefix)
    dm = _fastmri(root, split=(3, 2, 1))
    names = {s: {r.path for r in dm.datasets[s].refs} for s in ("train", "val", "test")}
    assert all(p.parent.name == f"{prefix}singlecoil_train" for p in names["train"] | names["val"])
    assert all(p.parent.name == f"{prefix}singlecoil_val" for p in names["test"])
    assert (len(names["train"]), len(names["val"]), len(names["test"])) == (3, 1, 2)
    assert not names["train"] & names["val"]
    again = _fastmri(root, split=(3, 2, 1))
    assert {r.path for r in again.datasets["val"].refs} == names["val"]  # deterministic
    # counts above what is there: everything but the held-out validation files is used
    dm = _fastmri(root, split=(227, 24, 4))
    assert (
        len(dm.datasets["train"].refs),
        len(dm.datasets["val"].refs),
        len(dm.datasets["test"].refs),
    ) == (1, 4, 3)


def test_fastmri_both_challenges_need_a_choice(tmp_path: Path) -> None:
    root = _official_fastmri(
        tmp_path / "knee", train=2, val=1, challenges=("singlecoil", "multicoil")
    )
    with pytest.raises(DataError, match="data.challenge="):
        _fastmri(root)
    dm = _fastmri(root, split=(1, 1, 1), challenge="multicoil")
    assert {r.path.parent.name for r in dm.datasets["test"].refs} == {"multicoil_val"}


def test_fastmri_only_test_folder_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "knee" / "singlecoil_test"
    d.mkdir(parents=True)
    make_fastmri_file(d / "file1.h5", store_recon=False)
    with pytest.raises(DataError, match="no fastMRI train or val folder with ground truth"):
        _fastmri(tmp_path / "knee")


@pytest.mark.parametrize("n_files", [1, 2])
def test_split_all_scores_every_file(tmp_path: Path, n_files: int) -> None:
    """`data.split=all`: every file in the test split, however few (flat and official layouts)."""
    flat = make_fastmri(tmp_path / "flat", n_files=n_files)
    dm = _fastmri(flat, split="all")
    assert len(dm.datasets["test"].refs) == n_files and not dm.datasets["train"].refs
    with pytest.raises(DataError, match="split=all"):
        dm.train_dataloader()
    official = _official_fastmri(tmp_path / "knee", train=2, val=1)
    assert len(_fastmri(official, split="all").datasets["test"].refs) == 3
    ixi = make_ixi(tmp_path / "IXI", n_subjects=2, contrasts=("T1",), shape=(40, 44, 6))
    assert len(_ixi(ixi, split="all").datasets["test"].refs) == 2


@pytest.mark.parametrize("split", ["some", [1, 2], [1, -1, 1]])
def test_bad_split_setting(tmp_path: Path, split) -> None:
    from mrsr.errors import ConfigError

    with pytest.raises(ConfigError, match="data.split"):
        FastMRIDataModule(root=str(tmp_path), split=split)


def test_bad_challenge_setting(tmp_path: Path) -> None:
    from mrsr.errors import ConfigError

    with pytest.raises(ConfigError, match="data.challenge='knee'"):
        FastMRIDataModule(root=str(tmp_path), challenge="knee")
