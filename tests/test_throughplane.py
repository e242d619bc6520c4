"""``stage=throughplane``: slice-profile operators, geometry, the self-supervised gain over cubic
spline interpolation on a real scan, voxel positions, and refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.affines import apply_affine

from mrsr.data.readers import read_nifti
from mrsr.errors import ConfigError, DataError, MrsrError
from mrsr.isotropic import restore
from mrsr.isotropic.datamodule import SelfPairsDataModule, degrade_rows
from mrsr.isotropic.estimate import ProfileFit, estimate_profile, highband_ratio
from mrsr.isotropic.geometry import grid_affine, resampled_grid, thick_geometry
from mrsr.isotropic.operators import along, cubic_along, spline_matrix, thick_sampling
from mrsr.isotropic.profile import SliceProfile, slice_profile
from mrsr.isotropic.restore import HIGHBAND_LIMIT, thick_consistency
from mrsr.nets.srresnet import SRResNet
from mrsr.tasks import throughplane as tp_module
from mrsr.tasks.predict import predict
from mrsr.tasks.throughplane import throughplane, training_profiles
from tests.test_predict import rotated_affine, write_volume

DEMO = Path(__file__).resolve().parents[1] / "mrsr" / "assets" / "demo"
# A CPU-test-sized network and schedule (the stage's defaults are sized for whole scans).
TINY = [
    "stage.module.generator.n_blocks=3",
    "stage.module.generator.n_feats=16",
    "throughplane.patch_size=32",
    "throughplane.batch_size=8",
    "stage.module.warmup_steps=10",
    "~logger",
    "~callbacks.progress_bar",
]


# -- operators -----------------------------------------------------------------------------


def test_grid_is_cell_centred() -> None:
    g = resampled_grid(10, 4.0, 1.0)  # 10 slices of 4 mm -> 40 voxels of 1 mm
    assert g.n == 40 and np.allclose(g.positions, (np.arange(40) + 0.5) / 4 - 0.5)
    back = resampled_grid(40, 1.0, 4.0)
    assert back.n == 10 and np.allclose(back.positions, np.arange(10) * 4 + 1.5)
    odd = resampled_grid(7, 3.5, 1.0)  # non-integer ratio: same field of view, centred
    assert odd.n == 24 and np.isclose(odd.positions.mean(), 3.0)


def test_spline_interpolates_and_is_accurate() -> None:
    rng = np.random.default_rng(0)
    f = rng.random(12)
    assert np.allclose(spline_matrix(12, np.arange(12.0)) @ f, f)  # passes through the samples
    assert np.allclose(spline_matrix(5, np.linspace(-0.4, 4.4, 31)).sum(1), 1)  # keeps constants
    x = np.arange(20.0)
    pos = np.linspace(2, 17, 61)
    smooth = np.sin(x / 3)
    spline_err = np.abs(spline_matrix(20, pos) @ smooth - np.sin(pos / 3)).max()
    linear_err = np.abs(np.interp(pos, x, smooth) - np.sin(pos / 3)).max()
    assert spline_err < 5e-3 and spline_err < linear_err / 2
    # mirror boundary, as scipy.ndimage: beyond the edge the samples are reflected about it
    assert np.isclose(spline_matrix(12, np.array([-1.0])) @ f, f[1])


def test_thick_sampling_profiles() -> None:
    box, thick = thick_sampling(16, 1.0, 4.0, slice_profile("boxcar", 4.0))
    assert thick.n == 4 and np.allclose(box[1], np.r_[np.zeros(4), np.full(4, 0.25), np.zeros(8)])
    gauss, _ = thick_sampling(40, 1.0, 4.0, slice_profile("gaussian", 4.0))
    assert np.allclose(gauss.sum(1), 1)
    ramp = np.arange(40.0)
    # symmetric: centre value
    assert np.allclose((gauss @ ramp)[2:-2], (np.arange(10) * 4 + 1.5)[2:-2])
    i = np.arange(40)
    centred = gauss[5] * (i - 21.5) ** 2  # variance of the row = sigma^2 + 1/12 (voxel integral)
    assert np.isclose(centred.sum(), (4.0 / 2.3548) ** 2 + 1 / 12, rtol=1e-2)


def test_measured_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "profile.txt"
    path.write_text("0\n1\n1\n1\n1\n0\n")  # 4 samples of 1 every 1 mm, centred
    measured = slice_profile(str(path), 0, step=1.0)
    box = slice_profile("boxcar", 4.0)
    a, _ = thick_sampling(24, 1.0, 4.0, measured)
    b, _ = thick_sampling(24, 1.0, 4.0, box)
    assert np.allclose(a[1:-1], b[1:-1], atol=0.04)
    np.save(tmp_path / "p.npy", np.array([0.2, 1.0, 0.2]))
    assert slice_profile(str(tmp_path / "p.npy"), 0, step=2.0).kind == "measured"
    (tmp_path / "bad.txt").write_text("1\nnan\n")
    with pytest.raises(DataError, match="bad.txt"):
        slice_profile(str(tmp_path / "bad.txt"), 0, step=1.0)
    with pytest.raises(DataError, match="not found"):
        slice_profile(str(tmp_path / "missing.txt"), 0, step=1.0)
    with pytest.raises(ConfigError, match="gaussian or boxcar"):
        slice_profile("triangle", 4.0)


@pytest.mark.parametrize(("h", "spacing"), [(40, 4.0), (39, 4.0), (40, 3.0), (41, 5.0)])
def test_training_pairs_match_the_thick_axis(h: int, spacing: float) -> None:
    """A training input is what the scan's thick axis becomes at inference: slices sampled with
    the profile, then the cubic spline onto the working grid, with the same sampling phase
    whether or not the in-plane size divides by the factor."""
    vol = read_nifti(DEMO / "stroke_T1.nii.gz").data[40:50, 30 : 30 + h, 40:80]
    profile = slice_profile("gaussian", spacing)
    inputs, targets = degrade_rows(vol, 1.0, spacing, profile)
    n_thick = int(h // spacing)
    assert targets.shape[1] == inputs.shape[1] == n_thick * spacing
    # the same targets acquired as a scan whose thick axis is axis 1, then interpolated as at
    # inference
    sampling, thick = thick_sampling(targets.shape[1], 1.0, spacing, profile)
    scan = along(targets, sampling, 1)
    assert thick.n == n_thick and np.allclose(
        thick.positions, (np.arange(n_thick) + 0.5) * spacing - 0.5
    )
    at_inference = cubic_along(np.moveaxis(scan, 1, 0), 0, resampled_grid(n_thick, spacing, 1.0))
    assert np.allclose(np.moveaxis(at_inference, 0, 1), inputs, atol=1e-3)
    start = (h - targets.shape[1]) // 2
    assert np.array_equal(targets, vol[:, start : start + targets.shape[1]])


def test_same_size_network_starts_at_its_input() -> None:
    net = SRResNet(
        1,
        n_blocks=2,
        n_feats=8,
        batch_norm=False,
        residual_bicubic=True,
        upsampler="pixelshuffledirect",
    )
    x = torch.rand(2, 1, 23, 17)
    assert torch.equal(net(x), x)
    with pytest.raises(MrsrError, match="scale=3"):
        SRResNet(3)


def test_self_pairs_hold_out_slices() -> None:
    vol = np.random.default_rng(0).random((20, 32, 24)).astype(np.float32)
    dm = SelfPairsDataModule(
        vol, 1.0, 3.0, slice_profile("gaussian", 3.0), steps=5, batch_size=4, patch_size=16
    )
    assert dm.held_out == [5, 15]
    assert len(dm.train_pairs.targets) == 2 * 18 and set(dm.train_pairs.source).isdisjoint(
        dm.held_out
    )
    shapes = {tuple(t.shape) for t in dm.val_pairs.targets}
    # both in-plane axes degraded (on the height axis, cropped to
    assert shapes == {(30, 24), (24, 32)}
    # the 10 or 8 slices of 3 mm they span)
    batch = next(iter(dm.train_dataloader()))
    assert batch.lr.shape == batch.hr.shape == (4, 1, 16, 16)
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch.lr, again.lr)  # patches depend on (seed, index) only
    vol[:8] = 0  # empty slices (a template's background) are not held out: their PSNR is infinite
    dm = SelfPairsDataModule(
        vol, 1.0, 3.0, slice_profile("gaussian", 3.0), steps=5, batch_size=4, patch_size=16
    )
    assert dm.held_out == [15]
    vol[:] = 0
    vol[11] = 1
    dm = SelfPairsDataModule(
        vol, 1.0, 3.0, slice_profile("gaussian", 3.0), steps=5, batch_size=4, patch_size=16
    )
    assert dm.held_out == [11]


def test_self_pairs_with_two_profiles() -> None:
    """Pairs made with a Gaussian and a boxcar: each slice with each, drawn equally often; the
    held-out slices are degraded with the first profile only."""
    vol = np.random.default_rng(0).random((20, 32, 24)).astype(np.float32)
    gauss, box = slice_profile("gaussian", 3.0), slice_profile("boxcar", 3.5)
    one = SelfPairsDataModule(vol, 1.0, 3.0, gauss, steps=5, batch_size=4, patch_size=16)
    two = SelfPairsDataModule(vol, 1.0, 3.0, [gauss, box], steps=5, batch_size=4, patch_size=16)
    n = len(one.train_pairs.targets)
    assert len(two.train_pairs.targets) == 2 * n and two.train_pairs.source[:n] == (
        one.train_pairs.source
    )
    for k in (0, n // 2):  # the same slice and axis: one target (not a copy), each profile's input
        assert two.train_pairs.targets[k] is two.train_pairs.targets[n + k]
        assert torch.equal(two.train_pairs.targets[k], one.train_pairs.targets[k])
        assert torch.equal(two.train_pairs.inputs[k], one.train_pairs.inputs[k])
        assert not torch.allclose(two.train_pairs.inputs[k], two.train_pairs.inputs[n + k])
    assert all(
        torch.equal(a, b) for a, b in zip(two.val_pairs.inputs, one.val_pairs.inputs, strict=True)
    )
    assert two.degradation == "slice profiles gaussian (FWHM 3 mm), boxcar (width 3.5 mm)"
    assert one.degradation == "slice profile gaussian (FWHM 3 mm)"
    with pytest.raises(ConfigError, match="no slice profile"):
        SelfPairsDataModule(vol, 1.0, 3.0, [], steps=5)


def test_training_profiles_follow_the_rule() -> None:
    from omegaconf import OmegaConf

    fit = ProfileFit(
        SliceProfile("gaussian", 4.5),
        0.10,
        SliceProfile("boxcar", 6.0),
        0.12,
        100,
        [
            ("gaussian", 4.5, 0.10),
            ("gaussian", 4.75, 0.11),
            ("boxcar", 6.0, 0.12),
            ("boxcar", 5.75, 0.2),
            ("gaussian", 4.25, 0.114),
        ],
    )

    def chosen(rule: str, found: ProfileFit | None = fit) -> list[str]:
        tp = OmegaConf.create({"train_profiles": rule})
        return [p.describe() for p in training_profiles(tp, fit.profile, found)]

    g, b = "gaussian (FWHM 4.5 mm)", "boxcar (width 6 mm)"
    assert chosen("families") == [g, b]  # the best of each family, the estimate first
    # also every width within 15 % of the best misfit, by misfit
    assert chosen("plausible") == [g, b, "gaussian (FWHM 4.75 mm)", "gaussian (FWHM 4.25 mm)"]
    assert chosen("estimate") == [g]
    many = ProfileFit(
        fit.profile,
        0.10,
        fit.other,
        0.12,
        100,
        [("gaussian", 4.5 + w / 8, 0.10 + w / 1000) for w in range(12)] + [("boxcar", 6.0, 0.12)],
    )
    assert len(many.plausible()) == 6 and many.plausible()[:2] == [fit.profile, fit.other]
    assert chosen("families", None) == [g]  # a given profile is trained on alone
    with pytest.raises(ConfigError, match="plausible, families, estimate"):
        chosen("both")


def test_thick_consistency_reads_zero_for_the_truth_and_more_for_the_cubic_spline(
    field: np.ndarray,
) -> None:
    fine = field[:, :40, :40].astype(np.float32)  # 1 mm along axis 0
    profile = slice_profile("gaussian", 4.0)
    sampling, _ = thick_sampling(fine.shape[0], 1.0, 4.0, profile)
    thick = along(fine, sampling, 0)
    geom = thick_geometry((4.0, 1.0, 1.0), thick.shape)
    assert geom.fine_grid().n == fine.shape[0]
    assert thick_consistency(fine, thick, geom, profile) < 1e-6
    cubic = cubic_along(thick, 0, geom.fine_grid())
    assert thick_consistency(cubic, thick, geom, profile) > 0.01


# -- geometry and refusals -------------------------------------------------------------------


def test_thick_geometry() -> None:
    g = thick_geometry((0.9, 0.9, 3.6), (200, 200, 30))
    assert (g.axis, g.inplane, g.ratio) == (2, (0, 1), pytest.approx(4.0))
    assert thick_geometry((5.0, 1.0, 1.0), (20, 64, 64)).axis == 0
    # non-integer ratio
    assert thick_geometry((1.0, 1.0, 3.5), (64, 64, 20)).output_grid(None).n == 70
    with pytest.raises(ConfigError, match="isotropic"):
        thick_geometry((1.0, 1.0, 1.2), (64, 64, 50))
    with pytest.raises(ConfigError, match="not square"):
        thick_geometry((0.5, 1.0, 4.0), (64, 64, 20))
    with pytest.raises(ConfigError, match="axis=3"):
        thick_geometry((1.0, 1.0, 4.0), (64, 64, 20), axis=3)
    # 8x is the largest factor taken
    assert thick_geometry((1.0, 1.0, 8.0), (64, 64, 20)).ratio == 8.0
    with pytest.raises(
        ConfigError, match=r"9.0x the in-plane voxel size, above the 8x .* >= 1.12 mm"
    ):
        thick_geometry((1.0, 1.0, 9.0), (64, 64, 20))
    with pytest.raises(ConfigError, match="has 7 slice.* too few in-plane slices .* >= 8"):
        thick_geometry((1.0, 1.0, 4.0), (64, 64, 7))
    with pytest.raises(ConfigError, match="12 x 64 voxels of 1 mm: too small to learn from"):
        thick_geometry((1.0, 1.0, 2.0), (12, 64, 20))
    with pytest.raises(
        ConfigError, match="20 x 64 voxels of 1 mm: too small"
    ):  # < 4 slices of 6 mm across
        thick_geometry((1.0, 1.0, 6.0), (20, 64, 20))


# -- the slice profile estimate and the self-check --------------------------------------------


def random_field(shape: tuple[int, int, int], seed: int = 0, slope: float = 2.0) -> np.ndarray:
    """An isotropic random field (power ~ 1 / |f|^slope) around 0.5: its lines look alike along
    every axis."""
    rng = np.random.default_rng(seed)
    f = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k = np.sqrt(sum(x**2 for x in f))
    k[0, 0, 0] = 1
    v = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) / k ** (slope / 2)))
    return (0.5 + 0.12 * (v - v.mean()) / v.std()).astype(np.float32)


def thick_slices(fine: np.ndarray, kind: str, r: int = 4) -> np.ndarray:
    """Every ``r`` slices along axis 0 made into one, without the stage's operators: the mean of
    each group, or a Gaussian of FWHM ``r`` voxels sampled at the voxel centres."""
    if kind == "boxcar":
        return fine.reshape(-1, r, *fine.shape[1:]).mean(1)
    sigma = r / 2.3548
    d = np.arange(-3 * r, 3 * r) + 0.5  # voxel centres around a group's centre
    w = np.exp(-0.5 * (d / sigma) ** 2)
    padded = np.pad(fine, [(3 * r, 3 * r), (0, 0), (0, 0)], mode="reflect")
    centres = (np.arange(fine.shape[0] // r) + 0.5) * r - 0.5 + 3 * r
    return np.stack(
        [np.tensordot(w / w.sum(), padded[(c + d).astype(int)], axes=1) for c in centres]
    )


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return random_field((128, 64, 64))


@pytest.mark.parametrize("kind", ["gaussian", "boxcar"])
def test_profile_estimate_finds_the_width_and_with_a_thickness_the_family(
    field: np.ndarray, kind: str
) -> None:
    """On an isotropic field the spectral fit recovers the width of 4 mm slices made by averaging
    or by a Gaussian; given the thickness it tells the two families apart by far. (Its width free,
    a Gaussian and a wider boxcar fit about equally: the spectrum cannot tell them apart.)"""
    thick = thick_slices(field, kind)
    fit = estimate_profile(thick, 1.0, 4.0, kinds=(kind,))
    assert fit.profile.kind == kind and abs(fit.profile.width - 4.0) <= 0.25, fit.describe()
    given = estimate_profile(thick, 1.0, 4.0, thickness=4.0)
    assert given.profile.kind == kind and given.other_residual > 3 * given.residual, (
        given.describe()
    )
    assert given.record()["estimate"] == given.profile.describe() and not given.ambiguous
    free = estimate_profile(thick, 1.0, 4.0)
    assert (
        free.residual <= fit.residual
        and free.other is not None
        and free.other.kind != free.profile.kind
    )


def test_estimate_refuses_a_volume_without_lines() -> None:
    with pytest.raises(ValueError, match="too few samples"):
        estimate_profile(np.ones((5, 20, 20), np.float32), 1.0, 4.0)
    with pytest.raises(ValueError, match="no structure"):
        estimate_profile(np.ones((40, 64, 64), np.float32), 1.0, 4.0)


def test_highband_ratio_sees_interpolation_and_oversharpening(field: np.ndarray) -> None:
    """Against thick slices of an isotropic volume: about 1 for the volume itself, far below 1
    for the cubic spline of the slices, above the warning limit when detail was added across."""
    fine = field[:, :48, :48]
    thick = thick_slices(fine, "gaussian")
    profile = slice_profile("gaussian", 4.0)
    assert 0.7 < highband_ratio(fine, thick, 1.0, 4.0, profile) < 1.4
    cubic = cubic_along(thick, 0, resampled_grid(32, 4.0, 1.0))
    assert highband_ratio(cubic, thick, 1.0, 4.0, profile) < 0.3
    blurred = (
        np.roll(fine, 1, 0) + 2 * fine + np.roll(fine, -1, 0)
    ) / 4  # [1 2 1] / 4 across axis 0 only
    sharpened = fine + 2.0 * (fine - blurred)  # unsharp masking across axis 0: invented detail
    assert highband_ratio(sharpened, thick, 1.0, 4.0, profile, select=fine) > HIGHBAND_LIMIT


@pytest.fixture
def thick_scan(tmp_path: Path):
    """A real T1 (1 mm) made into 4 mm slices along axis 2 with a Gaussian profile (FWHM 4 mm),
    under a rotated, translated affine."""
    ref_vol = read_nifti(DEMO / "stroke_T1.nii.gz").data[:, :, :136]  # 124 x 160 x 136 mm
    affine = rotated_affine() @ np.diag([1.0, 0.5, 1 / 3, 1.0])  # 1 mm voxels, rotated
    sampling, thick = thick_sampling(ref_vol.shape[2], 1.0, 4.0, slice_profile("gaussian", 4.0))
    data = along(ref_vol, sampling, 2)
    path = write_volume(tmp_path / "thick.nii.gz", data, grid_affine(affine, 2, thick))
    return path, ref_vol, affine


def test_throughplane_beats_cubic_and_lands_on_the_reference_grid(
    make_cfg, thick_scan, tmp_path: Path
) -> None:
    path, ref, ref_affine = thick_scan
    out = tmp_path / "iso.nii.gz"
    cfg = make_cfg(
        "stage=throughplane", f"input={path}", f"output={out}", "trainer.max_steps=400", *TINY
    )
    result = throughplane(cfg)
    img = nib.load(str(out))
    sr = np.asarray(img.dataobj, dtype=np.float32)
    assert sr.shape == ref.shape == tuple(result["shape_out"])
    # voxel centres: the output grid is the 1 mm reference grid ...
    assert np.allclose(img.affine, ref_affine, atol=1e-5)
    # ... and each 4 mm input voxel's centre is the mean of its four 1 mm output voxels' centres
    thick_img = nib.load(str(path))
    ijk = np.stack(np.meshgrid([0, 7, 123], [0, 50], [0, 11, 33], indexing="ij"), -1).reshape(-1, 3)
    for i, j, k in ijk:
        inner = [apply_affine(img.affine, (i, j, 4 * k + d)) for d in range(4)]
        assert np.allclose(np.mean(inner, 0), apply_affine(thick_img.affine, (i, j, k)), atol=1e-5)
    # the gain over cubic-spline interpolation along the thick axis, on the whole volume
    thick = np.asarray(thick_img.dataobj, dtype=np.float32)
    cubic = np.maximum(cubic_along(thick, 2, resampled_grid(34, 4.0, 1.0)), thick.min())
    peak = float(ref.max())

    def psnr(x: np.ndarray) -> float:
        return 10 * np.log10(peak**2 / np.mean((x.astype(np.float64) - ref) ** 2))

    gain = psnr(sr) - psnr(cubic)
    assert gain >= 1.0, f"SR {psnr(sr):.2f} dB vs cubic {psnr(cubic):.2f} dB"
    assert sr.min() >= thick.min() and sr.max() > thick.max()  # nothing clipped at the top
    assert result["held_out_psnr"] > result["held_out_psnr_cubic"]
    record = json.loads((Path(cfg.paths.output_dir) / "throughplane.json").read_text())
    assert (
        record["profile_source"] == "estimated"
        and record["profile"] == record["profile_fit"]["estimate"]
    )
    assert {"kind", "width_mm", "residual", "other_family", "other_residual", "ambiguous"} <= set(
        record["profile_fit"]
    )
    assert "not a measure of the through-plane gain" in record["held_out_note"]
    check = record["self_check"]
    assert (
        check["highband_ratio_cubic"] < check["highband_ratio"] < HIGHBAND_LIMIT
        and not check["oversharpened"]
    )
    assert record["may_be_worse_than_cubic"] is False and record["warnings"] == []
    # with the profile estimated, the pairs are made with the best fit of each family first
    assert record["training_profiles"][:2] == [
        record["profile_fit"]["estimate"],
        record["profile_fit"]["other_family"],
    ]
    # the receipt beside the output: what made it and the checks that apply
    receipt = json.loads((tmp_path / "iso.json").read_text())
    assert receipt["status"] == "done" and receipt["stage"] == "throughplane"
    assert receipt["trust"] == "within training conditions" and receipt["warnings"] == []
    assert np.allclose(receipt["input_image"]["voxel_mm"], [1, 1, 4])
    assert receipt["output_image"]["shape"] == list(ref.shape)
    assert np.allclose(receipt["output_image"]["voxel_mm"], [1, 1, 1])
    assert receipt["slice_profile"]["fit"] == record["profile_fit"]
    assert receipt["network"]["training_profiles"] == record["training_profiles"]
    checks = receipt["checks"]
    assert 0 < checks["noise"]["sigma"] < 0.06 and checks["intensities"]["negative_fraction"] == 0
    assert checks["resolution"]["interpolated"] is False
    # made into thick slices again, the output matches the scan better than the cubic spline
    assert receipt["self_check"]["consistency"] < receipt["self_check"]["consistency_cubic"]
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    with pytest.raises(ConfigError, match="through-plane network"):  # not an in-plane SR model
        predict(
            make_cfg(
                "stage=predict", f"ckpt={ckpt}", f"input={path}", f"output={tmp_path / 'p.nii.gz'}"
            )
        )


def test_non_integer_ratio_spacing_and_thick_axis_0(make_cfg, tmp_path: Path) -> None:
    """3.5 mm slices along axis 0 under a rotated affine, re-sampled to 1.25 mm. With the network
    held at its start (the identity: lr=0) the output is the spline of the input, which must
    reproduce an intensity ramp along the thick axis at every output voxel's world position."""
    n_thick = 20
    ramp = 100.0 + 10.0 * np.arange(n_thick)
    vol = np.broadcast_to(ramp[:, None, None], (n_thick, 40, 36)).astype(np.float32)
    affine = rotated_affine() @ np.diag([3.5, 0.5, 1 / 3, 1.0])  # voxels 3.5 x 1 x 1 mm
    path = write_volume(tmp_path / "ramp.nii.gz", vol, affine)
    out = tmp_path / "iso.nii.gz"
    throughplane(
        make_cfg(
            "stage=throughplane",
            f"input={path}",
            f"output={out}",
            "trainer.max_steps=2",
            "stage.module.lr=0",
            "throughplane.spacing=1.25",
            *TINY,
        )
    )
    img = nib.load(str(out))
    assert img.shape == (56, 40, 36) and np.allclose(img.header.get_zooms(), (1.25, 1, 1))
    got = np.asarray(img.dataobj)
    to_input = np.linalg.inv(affine) @ img.affine  # output voxel -> input voxel index
    for j in range(56):
        t = (to_input @ [j, 5, 7, 1.0])[0]  # the thick-axis index of output slice j
        assert np.allclose(to_input[1:3, :3] @ [j, 5, 7] + to_input[1:3, 3], [5, 7], atol=1e-6)
        if 4 <= t <= n_thick - 5:  # the spline reproduces a ramp away from the mirror boundary
            assert np.allclose(got[j], 100.0 + 10.0 * t, atol=1e-2), (j, t)
    # the output's field of view is the input's: first and last voxel edges coincide
    assert np.allclose(apply_affine(affine, (-0.5, 0, 0)), apply_affine(img.affine, (-0.5, 0, 0)))
    assert np.allclose(
        apply_affine(affine, (n_thick - 0.5, 0, 0)), apply_affine(img.affine, (55.5, 0, 0))
    )


def test_losses_are_selectable_like_stage_sr(
    make_cfg, thick_scan, tmp_path: Path, monkeypatch, caplog
) -> None:
    """An adversarial preset trains a discriminator beside the same-size generator. (With the
    self-check's limit set to 0, the run also shows the warning and the record's flag.)"""
    path, *_ = thick_scan
    cfg = make_cfg(
        "stage=throughplane",
        f"input={path}",
        f"output={tmp_path / 'gan.nii.gz'}",
        "trainer.max_steps=2",
        "loss=gan",
        "loss.terms.adv.weight=0.01",
        "loss.terms.adv.relative=false",
        "loss.terms.pixel.kind=charbonnier",
        "throughplane.slice_profile=boxcar",
        *TINY,
    )
    monkeypatch.setattr(tp_module, "HIGHBAND_LIMIT", 0.0)
    monkeypatch.setattr(
        restore,
        "self_check",
        lambda *args: {
            "highband_ratio": 3.0,
            "highband_ratio_cubic": 0.1,
            "highband_limit": 0.0,
            "oversharpened": True,
        },
    )
    caplog.set_level(logging.INFO, logger="mrsr")
    result = throughplane(cfg)
    assert (
        result["may_be_worse_than_cubic"]
        and result["profile_source"] == "given"
        and result["profile_fit"] is None
    )
    assert any(
        r.levelno == logging.WARNING and "worse than the cubic spline" in r.getMessage()
        for r in caplog.records
    )
    assert (
        "profile: a simulation that assumes that profile, not a measure of the through-plane gain"
        in caplog.text
    )
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert (
        ckpt["mrsr"]["scale"] == 1
        and ckpt["mrsr"]["config"]["loss"]["terms"]["adv"]["weight"] == 0.01
    )
    assert ckpt["mrsr"]["config"]["throughplane"]["axis"] == 2


def test_throughplane_refusals(make_cfg, thick_scan, tmp_path: Path) -> None:
    path, ref, _ = thick_scan

    def run(*extra: str, inp: Path = path, out: Path = tmp_path / "o.nii.gz"):
        return throughplane(
            make_cfg(
                "stage=throughplane",
                f"input={inp}",
                f"output={out}",
                "trainer.max_steps=1",
                *TINY,
                *extra,
            )
        )

    iso = write_volume(tmp_path / "iso.nii.gz", ref, np.eye(4))
    with pytest.raises(ConfigError, match="nothing to do"):
        run(inp=iso)
    four_d = write_volume(
        tmp_path / "4d.nii.gz", np.random.rand(8, 8, 4, 2), np.diag([1, 1, 4, 1.0])
    )
    with pytest.raises(DataError, match="4d.nii.gz: (expected a 3D image|is 4D)"):
        run(inp=four_d)
    nan = ref[:, :, ::4].copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        run(inp=write_volume(tmp_path / "nan.nii.gz", nan, np.diag([1, 1, 4, 1.0])))
    with pytest.raises(MrsrError, match="does not exist"):
        run(out=tmp_path / "missing" / "o.nii.gz")
    with pytest.raises(MrsrError, match="is the input"):
        run(out=path)
    with pytest.raises(ConfigError, match=r"loss.terms.pixel.target=dc: .*\(target hr\)"):
        run("loss.terms.pixel.target=dc")
    with pytest.raises(ConfigError, match="one device"):
        run("trainer=ddp_cpu")
    with pytest.raises(ConfigError, match="throughplane.precision=fp8"):
        run("throughplane.precision=fp8")
    with pytest.raises(ConfigError, match="throughplane.orientations=3"):
        run("throughplane.orientations=3")
    with pytest.raises(ConfigError, match="throughplane.train_profiles=all"):
        run("throughplane.train_profiles=all")
    (tmp_path / "mine.json").write_text('{"my": "notes"}')  # a user's JSON where the receipt goes
    with pytest.raises(ConfigError, match="not an mrsr receipt"):
        run(out=tmp_path / "mine.nii.gz")
    assert (tmp_path / "mine.json").read_text() == '{"my": "notes"}'
    stamp = path.stat().st_mtime_ns
    (tmp_path / "taken.nii.gz").write_bytes(b"keep")
    with pytest.raises(MrsrError, match="overwrite=true"):
        run(out=tmp_path / "taken.nii.gz")
    assert (tmp_path / "taken.nii.gz").read_bytes() == b"keep" and path.stat().st_mtime_ns == stamp
    assert not (tmp_path / "o.nii.gz").exists()


def test_two_thick_axes_are_refused_naming_the_axis_to_pass() -> None:
    """The thick axis follows stage=predict's rule (mrsr.data.geometry)."""
    with pytest.raises(ConfigError, match=r"two axes are thick; .* so that only one axis is thick"):
        thick_geometry((1.0, 4.0, 4.0), (64, 20, 20))
    assert thick_geometry((4.0, 1.0, 1.0), (20, 64, 64)).axis == 0  # thick axis first, middle, last
    assert thick_geometry((1.0, 4.0, 1.0), (64, 20, 64)).axis == 1
    assert thick_geometry((1.0, 1.0, 4.0), (64, 64, 20)).axis == 2
    # square within the shared tolerance
    assert thick_geometry((1.0, 1.02, 3.0), (64, 64, 20)).axis == 2


def test_output_keeps_the_header_and_picks_one_volume_of_a_4d_file(
    make_cfg, tmp_path: Path
) -> None:
    """Header codes, units, intent and description survive; the slice-timing fields, which
    describe the thick slices that are gone, are cleared; output_dtype=input keeps int16."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(300 + 50 * t, 40, (10, 24, 20)), 0, None) for t in range(2)]
    data = np.stack(frames, -1).astype(np.int16)
    affine = np.diag([3.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"scanner Y"
    img.header.set_dim_info(slice=0)
    img.header["slice_code"], img.header["slice_end"], img.header["slice_duration"] = 1, 9, 0.1
    inp = tmp_path / "dyn.nii.gz"
    nib.save(img, str(inp))
    base = [
        "stage=throughplane",
        f"input={inp}",
        "trainer.max_steps=2",
        "stage.module.lr=0",
        "throughplane.slice_profile=gaussian",
        *TINY,
    ]
    with pytest.raises(DataError, match=r"dyn.nii.gz: is 4D .*pass throughplane.volume=<0..1>"):
        throughplane(make_cfg(*base, f"output={tmp_path / 'x.nii.gz'}"))
    with pytest.raises(ConfigError, match="output_dtype=int8 must be one of float32, input"):
        throughplane(
            make_cfg(*base, f"output={tmp_path / 'x.nii.gz'}", "throughplane.output_dtype=int8")
        )
    out = tmp_path / "iso.nii.gz"
    throughplane(
        make_cfg(*base, f"output={out}", "throughplane.volume=1", "throughplane.output_dtype=input")
    )
    res = nib.load(str(out))
    h = res.header
    assert res.shape == (30, 24, 20) and np.allclose(h.get_zooms(), (1.0, 1.0, 1.0))
    assert (int(h["sform_code"]), int(h["qform_code"])) == (4, 1) and h.get_xyzt_units() == (
        "mm",
        "sec",
    )
    assert bytes(h["descrip"]).startswith(b"scanner Y; mrsr through-plane SR")
    assert (
        int(h["slice_code"]) == 0 and int(h["slice_end"]) == 0 and float(h["slice_duration"]) == 0
    )
    assert h.get_data_dtype() == np.int16
    # volume 1, not volume 0
    assert abs(float(res.get_fdata().mean()) - float(frames[1].mean())) < 10


def test_precision_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch) -> None:
    """``throughplane.precision=auto``: bfloat16 autocast where the CPU has it natively (several
    times faster there), else the trainer's precision; a GPU keeps the trainer's; set values
    are taken as they are."""
    from omegaconf import OmegaConf

    auto = OmegaConf.create({"precision": "auto"})
    monkeypatch.setattr(tp_module, "cpu_has_bf16", lambda: True)
    assert tp_module.choose_precision(auto, "32-true", cuda=False) == "bf16-mixed"
    assert tp_module.choose_precision(auto, "32-true", cuda=True) == "32-true"
    monkeypatch.setattr(tp_module, "cpu_has_bf16", lambda: False)
    assert tp_module.choose_precision(auto, "32-true", cuda=False) == "32-true"
    fixed = OmegaConf.create({"precision": "bf16-mixed"})
    assert tp_module.choose_precision(fixed, "32-true", cuda=False) == "bf16-mixed"


def test_restore_in_bf16_and_on_the_foreground_stays_close_to_float32() -> None:
    """Applying the network under bfloat16 autocast and only on the foreground box changes the
    restored slices by little more than bfloat16 rounding (the skip path stays float32)."""
    torch.manual_seed(0)
    net = SRResNet(scale=1, n_blocks=2, n_feats=8, batch_norm=False, residual_bicubic=True)
    fine = np.zeros((24, 20, 22), dtype=np.float32)
    fine[4:20, 5:15, 6:18] = np.random.default_rng(0).random((16, 10, 12))
    ref = restore.restore_across(net, fine, 4, None, torch.device("cpu"), progress=False)
    fast = restore.restore_across(
        net,
        fine,
        4,
        None,
        torch.device("cpu"),
        progress=False,
        crop_background=True,
        bf16=True,
    )
    assert fast.dtype == np.float32 and fast.shape == ref.shape
    assert np.abs(fast - ref).max() < 0.02 and np.abs(fast - ref).mean() < 2e-3


def test_a_thick_scan_stored_with_its_thick_axis_anywhere(make_cfg, tmp_path: Path) -> None:
    """One real thick slab (stroke T1, 4 mm slices made by averaging, not the stage's operator)
    stored with its thick axis first, in the middle and last: the same output voxels at the same
    world points, and the same receipt checks, each naming its thick axis."""
    ref = read_nifti(DEMO / "stroke_T1.nii.gz").data[30:94, 40:120, 40:120]  # 64 x 80 x 80 mm
    thick = ref.reshape(64, 80, 20, 4).mean(-1)  # (x, y, z): z thick, 4 mm
    base = rotated_affine() @ np.diag([1.0, 0.5, 4 / 3, 1.0])  # voxels 1 x 1 x 4 mm, rotated
    outputs, receipts = [], []
    for axis in (0, 1, 2):  # where z is stored; x and y keep their order
        order = {0: (2, 0, 1), 1: (0, 2, 1), 2: (0, 1, 2)}[axis]
        perm = np.eye(4)
        perm[:3, :3] = np.eye(3)[:, order]  # stored voxel index -> (x, y, z) index
        path = write_volume(
            tmp_path / f"thick{axis}.nii.gz", np.transpose(thick, order), base @ perm
        )
        out = tmp_path / f"iso{axis}.nii.gz"
        throughplane(
            make_cfg(
                "stage=throughplane",
                f"input={path}",
                f"output={out}",
                "trainer.max_steps=20",
                *TINY,
            )
        )
        img = nib.load(str(out))
        back = np.argsort(order)  # stored output axes -> (x, y, z)
        outputs.append((np.transpose(np.asarray(img.dataobj), back), img.affine, order))
        receipts.append(json.loads((tmp_path / f"iso{axis}.json").read_text()))
        assert receipts[-1]["thick_axis"] == {
            "axis": axis,
            "why": "largest voxel size",
            "spacing_mm": 4.0,
            "inplane_mm": 1.0,
        }
    voxel = (3, 7, 50)  # an output voxel, in (x, y, z) order

    def world(affine: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
        return apply_affine(affine, [voxel[a] for a in order])

    (data0, affine0, order0), *rest = outputs
    for data, affine, order in rest:
        assert data.shape == data0.shape == ref.shape
        assert np.array_equal(data, data0)  # one thread: the same voxels bit for bit
        # the same output voxel sits at the same world point in every file
        assert np.allclose(world(affine, order), world(affine0, order0), atol=1e-5)
    for r in receipts[1:]:
        assert r["checks"] == receipts[0]["checks"]
        assert r["slice_profile"] == receipts[0]["slice_profile"]


# -- thick slices simulated without the stage's operators --------------------------------------


def test_plain_thick_slices_are_the_means_and_kernels_they_claim() -> None:
    from mrsr.isotropic.simulate import plain_kernel, plain_thick

    rng = np.random.default_rng(0)
    fine = rng.random((40, 6, 5))
    box = plain_thick(fine, 4, "boxcar")
    assert np.allclose(box, fine.reshape(10, 4, 6, 5).mean(1), atol=1e-6)
    offsets = np.arange(-7, 7) + 0.5
    for kind in ("gaussian", "triangle", "softbox"):
        k = plain_kernel(kind, 4, offsets)
        half = offsets[k >= k.max() / 2]  # each profile's FWHM is 4 voxels
        assert half.max() - half.min() + 1 == 4 and np.allclose(k, k[::-1]), kind
        # slices of a constant are that constant; of a ramp, the ramp at each slice's centre
        assert np.allclose(plain_thick(np.full((40, 2, 2), 3.0), 4, kind), 3.0)
        ramp = np.broadcast_to(np.arange(40.0)[:, None, None], (40, 2, 2))
        inner = plain_thick(ramp, 4, kind)[2:-2, 0, 0]  # away from the mirrored edges
        assert np.allclose(inner, np.arange(2, 8) * 4 + 1.5, atol=1e-4), kind
    assert not np.allclose(plain_thick(fine, 4, "triangle"), plain_thick(fine, 4, "softbox"))
    with pytest.raises(ValueError, match="unknown profile 'sinc'"):
        plain_thick(fine, 4, "sinc")


def test_bandlimited_keeps_what_the_slices_hold_and_removes_the_rest() -> None:
    from mrsr.isotropic.simulate import bandlimited, plain_profile

    z = np.arange(64.0)
    low = np.cos(2 * np.pi * z * 3 / 64)  # 3/64 cycle/mm: below the 4 mm Nyquist (1/8)
    high = np.cos(2 * np.pi * z * 12 / 64)  # 12/64: above it
    vol = np.broadcast_to((low + high)[None, :, None], (3, 64, 2))
    out = bandlimited(vol, 1, 1.0, 4.0)
    assert np.allclose(out, np.broadcast_to(low[None, :, None], vol.shape), atol=1e-9)
    # a profile the stage does not model, as a measured profile for its operators
    tri = plain_profile("triangle", 4.0, 1.0)
    assert tri.kind == "measured" and np.isclose(
        tri(np.array([0.0]))[0] / 2, tri(np.array([2.0]))[0]
    )
    assert plain_profile("gaussian", 4.0, 1.0) == slice_profile("gaussian", 4.0)


def test_the_receipt_says_when_the_in_plane_slices_are_an_interpolation(
    make_cfg, tmp_path: Path
) -> None:
    """In-plane slices zero-filled by 2 (a scanner's interpolation): the stage still runs, and
    the receipt and the log say the network learned to restore an interpolation."""
    from mrsr.ops import zerofill_upsample

    ref = read_nifti(DEMO / "stroke_T1.nii.gz").data[20:100, 20:140, :128]
    thick = ref.reshape(80, 120, 32, 4).mean(-1)  # 4 mm slices, 1 mm in-plane
    low = torch.from_numpy(np.ascontiguousarray(np.moveaxis(thick, 2, 0)[:, ::2, ::2]))[:, None]
    zf = np.moveaxis(zerofill_upsample(low.float(), 2)[:, 0].clamp_min(0).numpy(), 0, 2)
    path = write_volume(tmp_path / "zf.nii.gz", zf, np.diag([1.0, 1.0, 4.0, 1.0]))
    out = tmp_path / "zf_iso.nii.gz"
    record = throughplane(
        make_cfg(
            "stage=throughplane", f"input={path}", f"output={out}", "trainer.max_steps=2", *TINY
        )
    )
    receipt = json.loads((tmp_path / "zf_iso.json").read_text())
    # the run's record says what the receipt says (the input is checked before training)
    assert record["warnings"] == receipt["warnings"]
    assert receipt["checks"]["resolution"]["interpolated"] is True
    assert max(receipt["checks"]["resolution"]["inplane_cutoff_fraction_of_nyquist"]) < 0.6
    said = [w for w in receipt["warnings"] if "in-plane slices look interpolated" in w]
    assert len(said) == 1 and "restore an interpolation" in said[0]
    assert receipt["trust"] == "outside training conditions"
