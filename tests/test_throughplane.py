"""``stage=throughplane``: slice-profile operators, geometry, the self-supervised gain over cubic
spline interpolation on a real scan, voxel positions, and refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.affines import apply_affine

from mrsr.data.readers import read_nifti
from mrsr.data.self_pairs import SelfPairsDataModule, degrade_rows
from mrsr.data.slice_profile import (
    along,
    resampled_grid,
    slice_profile,
    spline_matrix,
    thick_sampling,
)
from mrsr.errors import ConfigError, DataError, MrsrError
from mrsr.nets.srresnet import SRResNet
from mrsr.tasks.predict import predict
from mrsr.tasks.throughplane import cubic_along, grid_affine, thick_geometry, throughplane
from tests.test_predict import rotated_affine, write_volume

DEMO = Path(__file__).resolve().parents[1] / "mrsr" / "assets" / "demo"
# A CPU-test-sized network and schedule (the stage's defaults are sized for whole scans).
TINY = ["stage.module.generator.n_blocks=3", "stage.module.generator.n_feats=16", "throughplane.patch_size=32",
        "throughplane.batch_size=8", "stage.module.warmup_steps=10", "~logger", "~callbacks.progress_bar"]


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
    assert np.allclose((gauss @ ramp)[2:-2], (np.arange(10) * 4 + 1.5)[2:-2])  # symmetric: centre value
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
    # the same targets acquired as a scan whose thick axis is axis 1, then interpolated as at inference
    sampling, thick = thick_sampling(targets.shape[1], 1.0, spacing, profile)
    scan = along(targets, sampling, 1)
    assert thick.n == n_thick and np.allclose(thick.positions, (np.arange(n_thick) + 0.5) * spacing - 0.5)
    at_inference = cubic_along(np.moveaxis(scan, 1, 0), 0, resampled_grid(n_thick, spacing, 1.0))
    assert np.allclose(np.moveaxis(at_inference, 0, 1), inputs, atol=1e-3)
    start = (h - targets.shape[1]) // 2
    assert np.array_equal(targets, vol[:, start : start + targets.shape[1]])


def test_same_size_network_starts_at_its_input() -> None:
    net = SRResNet(1, n_blocks=2, n_feats=8, batch_norm=False, residual_bicubic=True, upsampler="pixelshuffledirect")
    x = torch.rand(2, 1, 23, 17)
    assert torch.equal(net(x), x)
    with pytest.raises(MrsrError, match="scale=3"):
        SRResNet(3)


def test_self_pairs_hold_out_slices() -> None:
    vol = np.random.default_rng(0).random((20, 32, 24)).astype(np.float32)
    dm = SelfPairsDataModule(vol, 1.0, 3.0, slice_profile("gaussian", 3.0), steps=5, batch_size=4, patch_size=16)
    assert dm.held_out == [5, 15]
    assert len(dm.train_pairs.targets) == 2 * 18 and set(dm.train_pairs.source).isdisjoint(dm.held_out)
    shapes = {tuple(t.shape) for t in dm.val_pairs.targets}
    assert shapes == {(30, 24), (24, 32)}  # both in-plane axes degraded (on the height axis, cropped to
    # the 10 or 8 slices of 3 mm they span)
    batch = next(iter(dm.train_dataloader()))
    assert batch.lr.shape == batch.hr.shape == (4, 1, 16, 16)
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch.lr, again.lr)  # patches depend on (seed, index) only


# -- geometry and refusals -------------------------------------------------------------------

def test_thick_geometry() -> None:
    g = thick_geometry((0.9, 0.9, 3.6), (200, 200, 30))
    assert (g.axis, g.inplane, g.ratio) == (2, (0, 1), pytest.approx(4.0))
    assert thick_geometry((5.0, 1.0, 1.0), (20, 64, 64)).axis == 0
    assert thick_geometry((1.0, 1.0, 3.5), (64, 64, 20)).output_grid(None).n == 70  # non-integer ratio
    with pytest.raises(ConfigError, match="isotropic"):
        thick_geometry((1.0, 1.0, 1.2), (64, 64, 50))
    with pytest.raises(ConfigError, match="not square"):
        thick_geometry((0.5, 1.0, 4.0), (64, 64, 20))
    with pytest.raises(ConfigError, match="axis=3"):
        thick_geometry((1.0, 1.0, 4.0), (64, 64, 20), axis=3)


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


def test_throughplane_beats_cubic_and_lands_on_the_reference_grid(make_cfg, thick_scan, tmp_path: Path) -> None:
    path, ref, ref_affine = thick_scan
    out = tmp_path / "iso.nii.gz"
    cfg = make_cfg("stage=throughplane", f"input={path}", f"output={out}", "trainer.max_steps=400", *TINY)
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
    assert (Path(cfg.paths.output_dir) / "throughplane.json").is_file()
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    with pytest.raises(ConfigError, match="through-plane network"):  # not an in-plane SR model
        predict(make_cfg("stage=predict", f"ckpt={ckpt}", f"input={path}", f"output={tmp_path / 'p.nii.gz'}"))


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
    throughplane(make_cfg("stage=throughplane", f"input={path}", f"output={out}", "trainer.max_steps=2",
                          "stage.module.lr=0", "throughplane.spacing=1.25", *TINY))
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
    assert np.allclose(apply_affine(affine, (n_thick - 0.5, 0, 0)), apply_affine(img.affine, (55.5, 0, 0)))


def test_losses_are_selectable_like_stage_sr(make_cfg, thick_scan, tmp_path: Path) -> None:
    """An adversarial preset trains a discriminator beside the same-size generator."""
    path, *_ = thick_scan
    cfg = make_cfg("stage=throughplane", f"input={path}", f"output={tmp_path / 'gan.nii.gz'}",
                   "trainer.max_steps=2", "loss.adv=0.01", "loss.pixel_type=charbonnier", *TINY)
    throughplane(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert ckpt["mrsr"]["scale"] == 1 and ckpt["mrsr"]["config"]["loss"]["adv"] == 0.01
    assert ckpt["mrsr"]["config"]["throughplane"]["axis"] == 2


def test_throughplane_refusals(make_cfg, thick_scan, tmp_path: Path) -> None:
    path, ref, _ = thick_scan

    def run(*extra: str, inp: Path = path, out: Path = tmp_path / "o.nii.gz"):
        return throughplane(make_cfg("stage=throughplane", f"input={inp}", f"output={out}",
                                     "trainer.max_steps=1", *TINY, *extra))

    iso = write_volume(tmp_path / "iso.nii.gz", ref, np.eye(4))
    with pytest.raises(ConfigError, match="nothing to do"):
        run(inp=iso)
    four_d = write_volume(tmp_path / "4d.nii.gz", np.random.rand(8, 8, 4, 2), np.diag([1, 1, 4, 1.0]))
    with pytest.raises(DataError, match="4d.nii.gz: expected a 3D image"):
        run(inp=four_d)
    nan = ref[:, :, ::4].copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        run(inp=write_volume(tmp_path / "nan.nii.gz", nan, np.diag([1, 1, 4, 1.0])))
    with pytest.raises(MrsrError, match="does not exist"):
        run(out=tmp_path / "missing" / "o.nii.gz")
    with pytest.raises(MrsrError, match="is the input"):
        run(out=path)
    with pytest.raises(ConfigError, match="loss.target=hr"):
        run("loss.target=dc")
    with pytest.raises(ConfigError, match="one device"):
        run("trainer=ddp_cpu")
    stamp = path.stat().st_mtime_ns
    (tmp_path / "taken.nii.gz").write_bytes(b"keep")
    with pytest.raises(MrsrError, match="overwrite=true"):
        run(out=tmp_path / "taken.nii.gz")
    assert (tmp_path / "taken.nii.gz").read_bytes() == b"keep" and path.stat().st_mtime_ns == stamp
    assert not (tmp_path / "o.nii.gz").exists()
