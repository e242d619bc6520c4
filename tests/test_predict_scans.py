"""``stage=predict`` on scans stored the ways scanners and converters store them: the
acquisition plane found from the voxel sizes, the header kept, outliers kept local, bad input
refused with what to do."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from mrsr import inference
from mrsr.data.geometry import slicing_axis
from mrsr.data.sources import demo_dir
from mrsr.dispatch import quiet_third_party
from mrsr.errors import ConfigError, DataError
from mrsr.tasks import predict as predict_mod
from tests.conftest import compose_cfg, phantom
from tests.test_predict import save_sr_checkpoint

# -- the rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("thick", [0, 1, 2])
def test_auto_axis_is_the_thick_one(thick: int) -> None:
    zooms = [0.9, 0.9, 0.9]
    zooms[thick] = 4.0
    choice = slicing_axis(tuple(zooms))
    assert choice.axis == thick and choice.square and "thick" in choice.reason
    assert choice.inplane == tuple(a for a in range(3) if a != thick)


def test_auto_axis_of_isotropic_and_ambiguous_volumes() -> None:
    assert slicing_axis((1.0, 1.0, 1.0)).axis == 2
    assert slicing_axis((1.0, 1.0, 1.2)).axis == 2  # below the 1.5x rule: isotropic
    with pytest.raises(ConfigError, match=r"two axes are thick.*predict.axis=0"):
        slicing_axis((1.0, 4.0, 4.0))
    with pytest.raises(ConfigError, match=r"not square.*predict.axis=0\|1\|2"):
        slicing_axis((0.5, 1.0, 4.0))
    # axis 2's slices are 1 x 0.9 mm, axis 1's square
    assert slicing_axis((1.0, 0.9, 1.0)).axis == 1
    assert slicing_axis((1.0, 0.898437, 0.898437)).axis == 0  # the demo's seg3d T1 (sagittal)
    with pytest.raises(
        ConfigError, match=r"no slice orientation has square voxels.*predict.axis=0\|1\|2"
    ):
        slicing_axis((0.8, 0.9, 1.0))
    explicit = slicing_axis((0.5, 1.0, 4.0), 2)
    assert explicit.axis == 2 and not explicit.square  # given: taken, and the caller warns
    with pytest.raises(ConfigError, match="auto, 0, 1 or 2"):
        slicing_axis((1.0, 1.0, 1.0), 3)


# -- predict on real layouts ----------------------------------------------------------------


def oblique(zooms: tuple[float, ...], seed: int) -> np.ndarray:
    """A random rotation (and a flip) times the voxel sizes: an oblique acquisition."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a = np.eye(4)
    a[:3, :3] = q @ np.diag(zooms)
    a[:3, 3] = rng.normal(size=3) * 20
    return a


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny stage-sr checkpoint whose generator is exactly bicubic."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = save_sr_checkpoint(lambda *o: compose_cfg(folder, list(o)), folder / "sr.ckpt")
    GlobalHydra.instance().clear()
    return path


def _predict(make_cfg, ckpt: Path, inp: Path, out: Path, *extra: str) -> dict:
    cfg = make_cfg("stage=predict", f"ckpt={ckpt}", f"input={inp}", f"output={out}", *extra)
    return predict_mod.predict(cfg)


@pytest.mark.parametrize("thick,seed", [(0, 1), (1, 2), (2, 3)])
def test_predict_refines_the_acquisition_plane(
    make_cfg, ckpt: Path, tmp_path: Path, thick: int, seed: int
) -> None:
    zooms = [1.0, 1.0, 1.0]
    zooms[thick] = 4.0
    shape = [10, 10, 10]
    shape[thick] = 3
    inp = tmp_path / "thick.nii.gz"
    affine = oblique(tuple(zooms), seed)
    nib.save(nib.Nifti1Image(phantom(tuple(shape), seed=seed) + 10, affine), str(inp))
    result = _predict(make_cfg, ckpt, inp, tmp_path / "sr.nii.gz")
    img = nib.load(str(tmp_path / "sr.nii.gz"))
    want = [z if a == thick else z / 2 for a, z in enumerate(zooms)]
    assert result["axis"] == thick and "thick" in result["axis_reason"]
    assert np.allclose(img.header.get_zooms(), want, atol=1e-5)
    assert list(img.shape) == [n if a == thick else 2 * n for a, n in enumerate(shape)]
    # the output overlays the input: output voxel (0,0,0) is input voxel -0.25 on the in-plane axes
    corner = np.array([0.0 if a == thick else -0.25 for a in range(3)] + [1.0])
    assert np.allclose(img.affine[:3, 3], (affine @ corner)[:3], atol=1e-4)


def test_predict_says_which_axis_and_why(make_cfg, ckpt: Path, tmp_path: Path, caplog) -> None:
    inp = tmp_path / "sag.nii.gz"
    nib.save(
        nib.Nifti1Image(phantom((4, 12, 12), seed=5) + 1, np.diag([5.0, 1.0, 1.0, 1.0])), str(inp)
    )
    with caplog.at_level(logging.INFO, logger="mrsr"):
        _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz")
    text = caplog.text
    assert "slicing axis 0 (auto: axis 0 is the thick one (5 mm, 5.0x the in-plane 1 mm))" in text
    assert "output voxels 5 x 0.5 x 0.5 mm" in text


def test_ambiguous_voxels_are_refused_with_the_setting_to_pass(
    make_cfg, ckpt: Path, tmp_path: Path
) -> None:
    inp = tmp_path / "odd.nii.gz"
    nib.save(
        nib.Nifti1Image(phantom((6, 6, 6), seed=1) + 1, np.diag([1.0, 4.0, 4.0, 1.0])), str(inp)
    )
    with pytest.raises(DataError, match=r"odd.nii.gz: .*two axes are thick.*predict.axis=0"):
        _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()
    # what the message says works
    _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz", "predict.axis=0")
    assert nib.load(str(tmp_path / "o.nii.gz")).shape == (6, 12, 12)


# -- the header -----------------------------------------------------------------------------


def _with_header(
    path: Path, data: np.ndarray, sform: int, qform: int, dtype=np.int16
) -> nib.Nifti1Image:
    affine = oblique((1.0, 1.0, 3.0), 7)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.set_sform(affine, code=sform)
    img.set_qform(affine, code=qform)
    img.header.set_xyzt_units("mm", "msec")
    img.header["descrip"] = b"TE=30;scanner X"
    img.header.set_intent("estimate", name="T1w")
    img.header["cal_min"], img.header["cal_max"] = 0, 500
    nib.save(img, str(path))
    return nib.load(str(path))


@pytest.mark.parametrize("sform,qform", [(4, 1), (2, 0), (1, 2), (0, 0)])
def test_output_keeps_the_header(
    make_cfg, ckpt: Path, tmp_path: Path, sform: int, qform: int
) -> None:
    inp = tmp_path / "in.nii.gz"
    # within int16 (x400 wrapped around to negative values: a signed image, refused)
    before = _with_header(inp, phantom((10, 10, 3), seed=2) * 20, sform, qform)
    _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz")
    h = nib.load(str(tmp_path / "o.nii.gz")).header
    assert (int(h["sform_code"]), int(h["qform_code"])) == (sform, qform)
    assert h.get_xyzt_units() == ("mm", "msec")
    assert bytes(h["descrip"]).startswith(b"TE=30;scanner X; mrsr x2 SR")
    assert h.get_intent()[0] == "estimate" and h.get_intent()[2] == "T1w"
    assert (float(h["cal_min"]), float(h["cal_max"])) == (0.0, 500.0)
    assert np.allclose(h.get_zooms(), (0.5, 0.5, 3.0), atol=1e-5)
    assert h.get_data_dtype() == np.float32
    if sform or qform:  # where it means something, the affine is the refined input affine
        want = inference.upsampled_affine(before.affine, 2, (0, 1))
        assert np.allclose(nib.load(str(tmp_path / "o.nii.gz")).affine, want, atol=1e-4)


@pytest.mark.parametrize("n", [0, 10, 66, 67, 79])
def test_description_keeps_the_tag_within_79_bytes(tmp_path: Path, n: int) -> None:
    like = nib.Nifti1Header()
    like["descrip"] = b"x" * n
    img = inference.output_image(np.zeros((2, 2, 2)), np.eye(4), like, note="mrsr x2 SR")
    got = bytes(img.header["descrip"]).rstrip(b"\0")
    assert got.endswith(b"mrsr x2 SR") and len(got) <= 79
    if n <= 67:  # fits: the user's text is kept whole
        assert got == (b"x" * n + b"; " if n else b"") + b"mrsr x2 SR"
    else:  # shortened, and says so
        assert got == b"x" * 64 + b"...; mrsr x2 SR"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_output_dtype_input_is_the_input_type_with_fitted_scaling(
    make_cfg, ckpt: Path, tmp_path: Path, dtype
) -> None:
    inp = tmp_path / "in.nii.gz"
    gain = 0.15 if dtype == np.uint8 else 20.0  # within the type's range, no wrap-around
    _with_header(inp, phantom((10, 10, 3), seed=4) * gain + 20, 2, 1, dtype)
    _predict(make_cfg, ckpt, inp, tmp_path / "f.nii.gz")
    _predict(make_cfg, ckpt, inp, tmp_path / "i.nii.gz", "predict.output_dtype=input")
    ref = nib.load(str(tmp_path / "f.nii.gz")).get_fdata()
    img = nib.load(str(tmp_path / "i.nii.gz"))
    assert img.get_data_dtype() == dtype
    step = float(img.dataobj.slope)
    assert np.abs(img.get_fdata() - ref).max() <= 0.51 * step  # rounding to the fitted scale only
    assert step <= (ref.max() - ref.min()) / (np.iinfo(dtype).max - np.iinfo(dtype).min) * 1.01
    assert (tmp_path / "i.nii.gz").stat().st_size < (tmp_path / "f.nii.gz").stat().st_size
    with pytest.raises(ConfigError, match="output_dtype=float64 must be one of float32, input"):
        _predict(make_cfg, ckpt, inp, tmp_path / "x.nii.gz", "predict.output_dtype=float64")


# -- outliers -------------------------------------------------------------------------------


def test_a_hot_voxel_stays_local(make_cfg, tmp_path: Path) -> None:
    """A voxel 100x the volume's maximum neither erases nearby anatomy (no pixel of it sent to
    the volume's minimum) nor changes the result beyond a couple of input voxels; its own
    value comes through."""
    vol = nib.load(str(demo_dir() / "seg3d_T1.nii.gz")).get_fdata(dtype=np.float32)[
        30:130, 60:160, 79:80
    ]
    centre = (50, 50, 0)
    hot = vol.copy()
    hot[centre] = vol.max() * 100

    def run(data: np.ndarray, name: str) -> np.ndarray:
        inp = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(inp))
        cfg = make_cfg(
            "stage=predict", f"input={inp}", f"output={tmp_path / (name + '_x2.nii.gz')}"
        )
        predict_mod.predict(cfg)  # the bundled x2 model
        return nib.load(str(tmp_path / f"{name}_x2.nii.gz")).get_fdata()[..., 0]

    base, out = run(vol, "base"), run(hot, "hot")
    yy, xx = np.mgrid[: base.shape[0], : base.shape[1]]
    # in input voxels
    r = np.hypot((yy + 0.5) / 2 - 0.5 - centre[0], (xx + 0.5) / 2 - 0.5 - centre[1])
    anatomy = base > np.percentile(base, 30)
    assert not ((out <= hot.min()) & anatomy).any()
    diff = np.abs(out - base) / vol.max()
    assert diff[r > 1.5].max() < 0.1 and diff[r > 4].max() < 0.02 and diff[r > 8].max() < 0.002
    assert out.max() == pytest.approx(hot.max(), rel=0.02)


# -- errors that say what to do --------------------------------------------------------------


def _dicom(path: Path) -> Path:
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 64)
    return path


def test_dicom_is_refused_with_the_conversion_to_run(make_cfg, ckpt: Path, tmp_path: Path) -> None:
    one = _dicom(tmp_path / "IM0001.dcm")
    with pytest.raises(
        DataError, match=r"IM0001.dcm: is a DICOM file: convert it to NIfTI first, e.g. `dcm2niix"
    ):
        _predict(make_cfg, ckpt, one, tmp_path / "o.nii.gz")
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        _dicom(series / f"IM{i:04d}")
    with pytest.raises(DataError, match=r"series: is a folder of DICOM files: .*dcm2niix"):
        _predict(make_cfg, ckpt, series, tmp_path / "o.nii.gz")


def test_4d_needs_a_volume_index(make_cfg, ckpt: Path, tmp_path: Path) -> None:
    data = np.stack([phantom((8, 8, 3), seed=s) + 1 for s in range(3)], -1)
    inp = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(inp))
    with pytest.raises(
        DataError,
        match=r"fmri.nii.gz: is 4D \(shape \(8, 8, 3, 3\): 3 volumes\): pass predict.volume",
    ):
        _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz")
    with pytest.raises(DataError, match=r"predict.volume=3: the file has 3 volumes \(0..2\)"):
        _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz", "predict.volume=3")
    _predict(make_cfg, ckpt, inp, tmp_path / "one.nii.gz", "predict.volume=1")
    # a 3D file
    _predict(make_cfg, ckpt, tmp_path / "one.nii.gz", tmp_path / "x.nii.gz", "predict.volume=0")
    nib.save(nib.Nifti1Image(data[..., 1], np.eye(4)), str(tmp_path / "v1.nii.gz"))
    _predict(make_cfg, ckpt, tmp_path / "v1.nii.gz", tmp_path / "two.nii.gz")
    one, two = (nib.load(str(tmp_path / n)).get_fdata() for n in ("one.nii.gz", "two.nii.gz"))
    assert one.shape == (16, 16, 3) and np.array_equal(one, two)


def test_nan_voxels_are_refused_with_how_to_replace_them(
    make_cfg, ckpt: Path, tmp_path: Path
) -> None:
    data = phantom((8, 8, 3), seed=1) + 1
    data[2, 2, 1] = np.nan
    inp = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(inp))
    with pytest.raises(
        DataError,
        match=r"nan.nii.gz: volume contains 1 NaN/inf voxels: replace them first.*nan_to_num",
    ):
        _predict(make_cfg, ckpt, inp, tmp_path / "o.nii.gz")


def test_a_refused_run_has_its_error_in_run_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrsr.run",
            "stage=predict",
            f"input={tmp_path / 'missing.nii.gz'}",
            f"output={tmp_path / 'o.nii.gz'}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    line = f"mrsr: input={tmp_path / 'missing.nii.gz'}: file not found"
    assert proc.stderr.strip().splitlines()[-1] == line
    assert line in (run_dir / "run.log").read_text()


# -- quiet, visible progress -----------------------------------------------------------------


def test_progress_is_logged_when_not_a_terminal(caplog) -> None:
    with (
        caplog.at_level(logging.INFO, logger="mrsr"),
        inference.SliceProgress("super-resolving slices", 10, every=0.0) as bar,
    ):
        for _ in range(5):
            bar.advance(2)
    lines = [r.getMessage() for r in caplog.records if "super-resolving" in r.getMessage()]
    assert lines[0].startswith("super-resolving slices: 2/10 (20%)") and lines[-1].startswith(
        "super-resolving slices: 10/10 (100%)"
    )
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="mrsr"),
        inference.SliceProgress("quiet", 4, enabled=False, every=0.0) as bar,
    ):
        bar.advance(4)
    assert not caplog.records


def test_third_party_tips_and_known_deprecations_are_filtered(caplog) -> None:
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    quiet_third_party()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing something")
        rank_zero_info("a real message")
    assert [r.getMessage() for r in caplog.records] == ["a real message"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_third_party()
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
            DeprecationWarning,
            stacklevel=1,
        )
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
