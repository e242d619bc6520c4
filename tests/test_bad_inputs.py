"""Broken inputs thrown at the data modules and the command line.

Every case must end in a :class:`mrsr.errors.MrsrError` whose message is one line naming
the offending file (or folder), or in the documented skip, and must leave the data folder
exactly as it was (same names, sizes and modification times).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from mrsr.data.datamodule import FastMRIDataModule, IXIDataModule
from mrsr.errors import ConfigError, DataError, MrsrError
from tests.conftest import make_fastmri_file, make_ixi, phantom

SHAPE = (24, 24, 6)
GOOD_NAME = "IXI002-Guys-0800-T1.nii.gz"


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    if not root.exists():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return sorted(out)


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype=None) -> Path:
    img = nib.Nifti1Image(
        data if dtype is None else data.astype(dtype), np.eye(4) if affine is None else affine
    )
    nib.save(img, str(path))
    return path


def good_ixi(tmp_path: Path, n: int = 4) -> Path:
    """A valid IXI folder of ``n`` T1 subjects (IXI002 ... ); tests then break one file."""
    return make_ixi(tmp_path / "IXI", n_subjects=n, contrasts=("T1",), shape=SHAPE)


def ixi_dm(root: Path, **kw) -> IXIDataModule:
    kw = {"split": (2, 1, 1), "crop": None, "patch_size": 8, "batch_size": 2, **kw}
    dm = IXIDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def fastmri_dm(root: Path, **kw) -> FastMRIDataModule:
    kw = {"split": (2, 1, 1), "fastmri_crop": (32, 32), "patch_size": 8, "batch_size": 2, **kw}
    dm = FastMRIDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def assert_one_line_error(err: BaseException, names: str) -> None:
    msg = str(err)
    assert isinstance(err, MrsrError)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert names in msg, msg
    assert "Traceback" not in msg


# ------------------------------------------------------------------ NIfTI cases
# Each case turns the first subject's file into something broken and returns the bad path.


def _replace(root: Path, writer: Callable[[Path], None]) -> Path:
    path = root / GOOD_NAME
    path.unlink()
    writer(path)
    return path


def truncated_gz(root: Path) -> Path:
    path = root / GOOD_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_header(root: Path) -> Path:
    path = root / GOOD_NAME
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:100]))
    return path


def corrupt_gzip(root: Path) -> Path:
    path = root / GOOD_NAME
    data = bytearray(path.read_bytes())
    data[20:200] = os.urandom(180)
    path.write_bytes(bytes(data))
    return path


def wrong_magic(root: Path) -> Path:
    path = root / GOOD_NAME
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[344:348] = b"XYZ\0"
    raw[0:4] = (1234).to_bytes(4, "little")  # not 348 (sizeof_hdr) either
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def plain_text(root: Path) -> Path:
    return _replace(root, lambda p: p.write_text("this is not an image\n"))


def not_gzip_raw_bytes(root: Path) -> Path:
    return _replace(root, lambda p: p.write_bytes(os.urandom(2000)))


def empty_file(root: Path) -> Path:
    return _replace(root, lambda p: p.write_bytes(b""))


def array(shape, dtype=np.float32, fill=None) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        data = phantom(shape, seed=1).astype(dtype) if fill is None else np.full(shape, fill, dtype)
        return _replace(root, lambda p: nifti(p, data))

    make.__name__ = f"array_{len(shape)}d"
    return make


def with_values(values: dict) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        data = phantom(SHAPE, seed=1).astype(np.float32)
        for idx, v in values.items():
            data[idx] = v
        return _replace(root, lambda p: nifti(p, data))

    return make


def _patch_header(root: Path, fields: dict[int, bytes]) -> Path:
    """Overwrite raw NIfTI-1 header bytes (offset -> bytes) of the first subject's file."""
    path = root / GOOD_NAME
    raw = bytearray(gzip.decompress(path.read_bytes()))
    for offset, value in fields.items():
        raw[offset : offset + len(value)] = value
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def with_affine(value: float) -> Callable[[Path], Path]:
    """sform_code 1 with every srow entry set to ``value`` (nibabel cannot save this itself)."""

    def make(root: Path) -> Path:
        srow = np.full(12, value, dtype="<f4").tobytes()
        return _patch_header(root, {252: np.array([0, 1], "<i2").tobytes(), 280: srow})

    return make


def with_zooms(zooms) -> Callable[[Path], Path]:
    """pixdim[1:4] set to ``zooms`` (qform/sform codes 0, so the affine comes from them)."""

    def make(root: Path) -> Path:
        return _patch_header(
            root, {80: np.array(zooms, "<f4").tobytes(), 252: np.array([0, 0], "<i2").tobytes()}
        )

    return make


def symlink_loop(root: Path) -> Path:
    path = root / GOOD_NAME
    path.unlink()
    other = root / "loop.tmp"
    os.symlink(other.name, path)
    os.symlink(path.name, other)
    return path


def dangling_symlink(root: Path) -> Path:
    path = root / GOOD_NAME
    path.unlink()
    os.symlink("does-not-exist.nii.gz", path)
    return path


def float64_beyond_float32(root: Path) -> Path:
    data = phantom(SHAPE, seed=1).astype(np.float64) * 1e300
    return _replace(root, lambda p: nifti(p, data))


NIFTI_CASES = {
    "truncated_gz": truncated_gz,
    "truncated_header": truncated_header,
    "corrupt_gzip": corrupt_gzip,
    "wrong_magic": wrong_magic,
    "plain_text": plain_text,
    "random_bytes": not_gzip_raw_bytes,
    "empty_file": empty_file,
    "1d": array((64,)),
    "2d": array((24, 24)),
    "4d_time_series": array((24, 24, 6, 3)),
    "5d": array((24, 24, 6, 2, 2)),
    "zero_sized_axis": array((24, 0, 6)),
    "all_zero": array(SHAPE, fill=0.0),
    "constant": array(SHAPE, np.int16, fill=37),
    "nan_voxels": with_values({(5, 5, 2): np.nan, (6, 6, 3): np.nan}),
    "inf_voxels": with_values({(5, 5, 2): np.inf}),
    "neg_inf_voxels": with_values({(5, 5, 2): -np.inf}),
    "float64_beyond_float32": float64_beyond_float32,
    "affine_zeros": with_affine(0.0),
    "affine_nan": with_affine(np.nan),
    "voxel_size_zero": with_zooms((0.0, 1.0, 1.0)),
    "voxel_size_huge": with_zooms((1e6, 1.0, 1.0)),
    "symlink_loop": symlink_loop,
    "dangling_symlink": dangling_symlink,
}


@pytest.mark.parametrize("case", list(NIFTI_CASES), ids=list(NIFTI_CASES))
def test_broken_nifti(tmp_path: Path, case: str) -> None:
    root = good_ixi(tmp_path)
    bad = NIFTI_CASES[case](root)
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        ixi_dm(root)
    assert_one_line_error(info.value, bad.name)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("dtype", "lo", "hi"),
    [
        (np.int16, -32768, 32767),
        (np.uint16, 0, 65535),
        (np.int32, -(2**31), 2**31 - 1),
        (np.uint8, 0, 255),
        (np.float64, -1e30, 1e30),
    ],
)
def test_extreme_integer_values_load_without_overflow(tmp_path: Path, dtype, lo, hi) -> None:
    root = good_ixi(tmp_path)
    data = np.full(SHAPE, lo, dtype=np.float64)
    data[4:20, 4:20, :] = hi
    data[8:16, 8:16, :] = lo / 2 + hi / 2
    _replace(root, lambda p: nifti(p, data.astype(dtype)))
    before = snapshot(root)
    dm = ixi_dm(root)
    ref = next(r for ds in dm.datasets.values() for r in ds.refs if r.path.name == GOOD_NAME)
    hr, lr = dm.store.get(ref)
    assert np.isfinite(hr.numpy()).all() and hr.min() == 0 and hr.max() == 1
    # ordering is preserved: the bright square is brighter than the middle, middle than background
    mid = hr[3, 0, 12, 12].item()
    assert (
        hr[3, 0, 5, 5].item() == pytest.approx(1.0)
        and 0.3 < mid < 0.7
        and hr[3, 0, 0, 0].item() == 0
    )
    assert snapshot(root) == before


def test_singleton_fourth_axis_is_accepted(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    _replace(root, lambda p: nifti(p, phantom(SHAPE, seed=3).astype(np.float32)[..., None]))
    dm = ixi_dm(root)
    assert sum(len(ds.refs) for ds in dm.datasets.values()) == 4


# ------------------------------------------------------------------ folder-level cases


def test_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "IXI"
    root.mkdir()
    with pytest.raises(DataError) as info:
        ixi_dm(root)
    assert_one_line_error(info.value, str(root))
    assert snapshot(root) == []


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        ixi_dm(tmp_path / "nope")
    assert_one_line_error(info.value, "nope")
    assert not (tmp_path / "nope").exists()


def test_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "IXI").write_text("x")
    with pytest.raises(DataError) as info:
        ixi_dm(tmp_path / "IXI")
    assert_one_line_error(info.value, "IXI")


def test_too_few_subjects(tmp_path: Path) -> None:
    root = good_ixi(tmp_path, n=2)
    with pytest.raises(DataError) as info:
        ixi_dm(root)
    assert_one_line_error(info.value, "2 subject")
    assert str(root) in str(info.value)


def test_bad_name_errors_then_skips(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    bad = root / "IXI_oops_T1.nii.gz"
    shutil.copy(root / GOOD_NAME, bad)
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        ixi_dm(root)
    assert_one_line_error(info.value, bad.name)
    dm = ixi_dm(root, on_bad_file="skip")
    names = {r.path.name for ds in dm.datasets.values() for r in ds.refs}
    assert bad.name not in names and len(names) == 4
    assert snapshot(root) == before


def test_unreadable_volume_skipped_under_skip_policy(tmp_path: Path) -> None:
    root = good_ixi(tmp_path, n=4)
    bad = corrupt_gzip(root)
    before = snapshot(root)
    dm = ixi_dm(root, on_bad_file="skip")
    names = {r.path.name for ds in dm.datasets.values() for r in ds.refs}
    assert bad.name not in names and len(names) == 3
    assert snapshot(root) == before


def test_unrelated_files_are_ignored(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    (root / "README.txt").write_text("notes")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "IXI050-HH-0900-T1.nii.gz").mkdir()  # a folder is not a volume
    dm = ixi_dm(root)
    assert sum(len(ds.refs) for ds in dm.datasets.values()) == 4


def test_duplicate_subject(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    dup = root / "IXI002-HH-0999-T1.nii.gz"
    shutil.copy(root / GOOD_NAME, dup)
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        ixi_dm(root)
    assert_one_line_error(info.value, "IXI002")
    assert "duplicate" in str(info.value)
    assert snapshot(root) == before


def test_mixed_contrasts_only_selected_used(tmp_path: Path) -> None:
    root = make_ixi(tmp_path / "IXI", n_subjects=4, contrasts=("T1", "T2", "PD"), shape=SHAPE)
    # a broken T2 file must not matter when only T1 is selected
    (root / "IXI003-HH-0801-T2.nii.gz").write_text("garbage")
    before = snapshot(root)
    dm = ixi_dm(root, contrasts=["T1"])
    refs = [r for ds in dm.datasets.values() for r in ds.refs]
    assert len(refs) == 4 and {r.contrast for r in refs} == {"T1"} and dm.classes == ["IXI-T1"]
    with pytest.raises(DataError) as info:
        ixi_dm(root, contrasts=["T2"])
    assert_one_line_error(info.value, "IXI003-HH-0801-T2.nii.gz")
    with pytest.raises(DataError) as info:
        ixi_dm(root, contrasts=["FLAIR"])
    assert_one_line_error(info.value, "FLAIR")
    assert snapshot(root) == before


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root from reading")
    root = good_ixi(tmp_path)
    (root / GOOD_NAME).chmod(0)
    try:
        before = snapshot(root)
        with pytest.raises(DataError) as info:
            ixi_dm(root)
        assert_one_line_error(info.value, GOOD_NAME)
        assert snapshot(root) == before
    finally:
        (root / GOOD_NAME).chmod(0o644)


def test_scale_that_does_not_fit(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    for scale in (3, 0, 1, 8.5):
        with pytest.raises(ConfigError) as info:
            ixi_dm(root, scale=scale)
        assert_one_line_error(info.value, f"scale={scale}")
    with pytest.raises(ConfigError) as info:
        ixi_dm(root, scale=4, patch_size=10)
    assert_one_line_error(info.value, "scale 4")


def test_image_smaller_than_scale(tmp_path: Path) -> None:
    root = good_ixi(tmp_path)
    path = _replace(root, lambda p: nifti(p, phantom((6, 6, 6), seed=1).astype(np.float32)))
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        ixi_dm(root, scale=4)
    assert_one_line_error(info.value, path.name)
    assert snapshot(root) == before


# ------------------------------------------------------------------ fastMRI (HDF5) cases


def good_fastmri(tmp_path: Path, n: int = 4) -> Path:
    root = tmp_path / "fastmri"
    root.mkdir()
    for i in range(n):
        make_fastmri_file(root / f"file{1000 + i}.h5", "CORPD_FBK", seed=i)
    return root


BAD_H5 = "file1000.h5"


def h5_truncated(root: Path) -> Path:
    p = root / BAD_H5
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def h5_garbage(root: Path) -> Path:
    p = root / BAD_H5
    p.write_bytes(b"\x89HDF\r\n" + os.urandom(500))
    return p


def h5_rewrite(**datasets) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        p = root / BAD_H5
        p.unlink()
        with h5py.File(p, "w") as f:
            attrs = datasets.pop("attrs", {"acquisition": "CORPD_FBK"})
            for k, v in datasets.items():
                f.create_dataset(k, data=v)
            for k, v in attrs.items():
                f.attrs[k] = v
            datasets["attrs"] = attrs
        return p

    return make


_rng = np.random.default_rng(0)
_K = (_rng.standard_normal((3, 2, 40, 40)) + 1j * _rng.standard_normal((3, 2, 40, 40))).astype(
    np.complex64
)
_K_NAN = _K.copy()
_K_NAN[1, 0, 3, 3] = np.nan

H5_CASES = {
    "truncated": h5_truncated,
    "garbage": h5_garbage,
    "missing_keys": h5_rewrite(ismrmrd_header=np.zeros(3)),
    "recon_2d": h5_rewrite(reconstruction_rss=np.ones((32, 32), np.float32)),
    "recon_4d": h5_rewrite(reconstruction_rss=np.ones((2, 2, 32, 32), np.float32)),
    "recon_zero_slices": h5_rewrite(reconstruction_rss=np.ones((0, 32, 32), np.float32)),
    "recon_nan": h5_rewrite(reconstruction_rss=np.full((3, 32, 32), np.nan, np.float32)),
    "recon_constant": h5_rewrite(reconstruction_rss=np.zeros((3, 32, 32), np.float32)),
    "kspace_real_dtype": h5_rewrite(kspace=np.ones((3, 2, 40, 40), np.float32)),
    "kspace_2d": h5_rewrite(kspace=_K[0, 0]),
    "kspace_nan": h5_rewrite(kspace=_K_NAN),
    "missing_acquisition": h5_rewrite(kspace=_K, attrs={"patient_id": "x"}),
    "unknown_acquisition": h5_rewrite(kspace=_K, attrs={"acquisition": "AXT2"}),
}


@pytest.mark.parametrize("case", list(H5_CASES), ids=list(H5_CASES))
def test_broken_hdf5(tmp_path: Path, case: str) -> None:
    root = good_fastmri(tmp_path)
    bad = H5_CASES[case](root)
    before = snapshot(root)
    with pytest.raises(DataError) as info:
        fastmri_dm(root)
    assert_one_line_error(info.value, bad.name)
    assert snapshot(root) == before


def test_hdf5_skip_policy(tmp_path: Path) -> None:
    root = good_fastmri(tmp_path, n=4)
    h5_rewrite(ismrmrd_header=np.zeros(3))(root)
    before = snapshot(root)
    dm = fastmri_dm(root, on_bad_file="skip", split=(1, 1, 1))
    names = {r.path.name for ds in dm.datasets.values() for r in ds.refs}
    assert names == {"file1001.h5", "file1002.h5", "file1003.h5"}
    assert snapshot(root) == before


def test_fastmri_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "fastmri"
    root.mkdir()
    with pytest.raises(DataError) as info:
        fastmri_dm(root)
    assert_one_line_error(info.value, "fastmri")


# ------------------------------------------------------------------ command line


def test_cli_reports_bad_file_on_one_line(tmp_path: Path) -> None:
    root = make_ixi(tmp_path / "data" / "IXI", n_subjects=3, contrasts=("T1",), shape=SHAPE)
    bad = [p.name for p in root.iterdir()]  # whichever split eval reads, its file is broken
    for name in bad:
        (root / name).write_bytes((root / name).read_bytes()[:300])
    before = snapshot(root)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrsr.run",
            "stage=eval",
            "model=bicubic",
            "data=ixi",
            "data.num_workers=0",
            f"paths.data_dir={tmp_path / 'data'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert any(name in lines[0] for name in bad), lines[0]
    assert snapshot(root) == before
