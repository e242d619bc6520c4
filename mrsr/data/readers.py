"""Validated readers for NIfTI volumes and fastMRI HDF5 files.

Every failure a user can cause raises :class:`~mrsr.errors.DataError` with the file
name and the problem on one line. Files are only ever opened read-only.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrsr.errors import DataError

FASTMRI_RECON_KEYS = ("reconstruction_rss", "reconstruction_esc")
FASTMRI_ACQUISITIONS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"}
MAX_VOXEL_MM = 100.0
# Millimetres per NIfTI spatial unit (``xyzt_units``); a file that does not say is in mm.
UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}
# FreeSurfer's MGH format (always in mm); anything else nibabel reads is refused.
MGH_SUFFIXES = (".mgz", ".mgh")


@dataclass
class NiftiVolume:
    """A 3D volume with its voxel-to-world affine (in the file's own axis order) and the file's
    header (codes, units, description, data type: what an output written from it keeps)."""

    data: np.ndarray  # float32, 3D
    affine: np.ndarray  # 4x4, in the file's spatial units (what an output written from it keeps)
    zooms: tuple[float, float, float]  # in mm, whatever the file's units (:data:`UNIT_MM`)
    header: object = None  # the file's nibabel header (a copy)


DICOM_HINT = (
    "convert it to NIfTI first, e.g. `dcm2niix -z y -o <out folder> <DICOM folder>`, "
    "then pass the .nii.gz"
)
NAN_HINT = (
    "replace them first, e.g. in Python: img = nibabel.load(path); "
    "nibabel.save(nibabel.Nifti1Image("
    "numpy.nan_to_num(img.get_fdata(), nan=0, posinf=0, neginf=0), "
    "img.affine, img.header), fixed_path)"
)


def is_dicom(path: Path) -> bool:
    """A DICOM part-10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_path(path: Path) -> None:
    try:
        if not path.exists():
            if path.is_symlink():
                raise DataError(path, "broken symbolic link or symlink loop")
            raise DataError(path, "file not found")
        if path.is_dir():
            if any(is_dicom(f) for f in sorted(path.iterdir())[:20] if f.is_file()):
                raise DataError(path, f"is a folder of DICOM files: {DICOM_HINT}")
            raise DataError(path, "is a folder, expected a file")
        with path.open("rb") as fh:
            fh.read(1)
    except PermissionError as err:
        raise DataError(path, "permission denied (file is not readable)") from err
    except OSError as err:  # symlink loops, broken links
        raise DataError(path, f"cannot be opened ({err.strerror or err})") from err


def check_values(path: Path, data: np.ndarray, what: str = "volume") -> None:
    """Refuse empty, non-finite or constant data."""
    if data.size == 0 or 0 in data.shape:
        raise DataError(path, f"{what} has a zero-sized axis (shape {tuple(data.shape)})")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite).sum())
        raise DataError(path, f"{what} contains {bad} NaN/inf voxels: {NAN_HINT}")
    if float(data.max()) == float(data.min()):
        raise DataError(path, f"{what} has constant intensity {float(data.max()):g}")


def _squeeze_to(
    path: Path,
    data: np.ndarray,
    ndims: tuple[int, ...],
    volume: int | None = None,
    volume_key: str | None = None,
) -> np.ndarray:
    while data.ndim > max(ndims) and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4 and 3 in ndims:
        n = data.shape[3]
        if volume is None:
            how = (
                f"pass {volume_key}=<0..{n - 1}> to use one of them"
                if volume_key
                else "extract one first (e.g. `fslroi in.nii.gz out.nii.gz <index> 1`)"
            )
            raise DataError(path, f"is 4D (shape {tuple(data.shape)}: {n} volumes): {how}")
        if not 0 <= volume < n:
            raise DataError(path, f"{volume_key}={volume}: the file has {n} volumes (0..{n - 1})")
        data = data[..., volume]
    elif volume not in (None, 0):
        raise DataError(
            path, f"{volume_key}={volume}: the file has one volume (shape {tuple(data.shape)})"
        )
    if data.ndim not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise DataError(
            path, f"expected a {want} image, got {data.ndim}D shape {tuple(data.shape)}"
        )
    return data


def read_nifti(
    path: str | Path,
    ndims: tuple[int, ...] = (3,),
    volume: int | None = None,
    volume_key: str | None = None,
) -> NiftiVolume:
    """Read a NIfTI (or FreeSurfer .mgz/.mgh) file as float32, validating shape, values, affine
    and voxel sizes. Voxel sizes are in mm whatever the file's spatial units (``xyzt_units``:
    metres, mm, microns; unknown: mm); the affine stays in the file's units.

    A 4D file is refused unless ``volume`` picks one of its volumes (``volume_key`` names the
    setting in the message)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    _check_path(path)
    try:
        img = nib.load(str(path))
    except ImageFileError as err:
        if is_dicom(path):
            raise DataError(path, f"is a DICOM file: {DICOM_HINT}") from err
        raise DataError(
            path, "not a NIfTI or MGH file (unrecognised header or magic bytes)"
        ) from err
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise DataError(path, f"corrupt or truncated image header ({err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image | nib.MGHImage):
        raise DataError(
            path, f"not a NIfTI or MGH image ({type(img).__name__}): pass a .nii, .nii.gz or .mgz"
        )
    if np.iscomplexobj(np.empty(0, dtype=img.get_data_dtype())):
        raise DataError(path, "complex-valued NIfTI is not supported (expected magnitude)")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float64))
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise DataError(path, f"corrupt or truncated image data ({err})") from err
    data = _squeeze_to(path, data, ndims, volume, volume_key)
    check_values(path, data)
    if np.abs(data).max() > np.finfo(np.float32).max:
        raise DataError(path, "intensities overflow float32")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "affine is singular or not finite")
    unit = spatial_unit(img.header)
    zooms = tuple(float(z) * UNIT_MM[unit] for z in _raw_pixdim(path, img)[: data.ndim])
    if any((not np.isfinite(z)) or z <= 0 or z > MAX_VOXEL_MM for z in zooms):
        stored = "" if unit in ("mm", "unknown") else f" (stored in {unit}s)"
        raise DataError(
            path, f"implausible voxel size {tuple(round(z, 6) for z in zooms)} mm{stored}"
        )
    return NiftiVolume(
        data=data.astype(np.float32),
        affine=affine,
        zooms=zooms,  # type: ignore[arg-type]
        header=img.header.copy(),
    )


def spatial_unit(header) -> str:
    """The spatial unit of a NIfTI header (a key of :data:`UNIT_MM`); MGH files are in mm."""
    get = getattr(header, "get_xyzt_units", None)
    unit = get()[0] if get is not None else "mm"
    return unit if unit in UNIT_MM else "unknown"


def _raw_pixdim(path: Path, img) -> np.ndarray:
    """Voxel sizes as stored (nibabel silently replaces zero sizes by 1 when loading)."""
    from nibabel.openers import ImageOpener

    if "pixdim" not in img.header:  # MGH: the stored voxel sizes
        return np.abs(np.asarray(img.header.get_zooms()[:3], dtype=np.float64))
    try:
        with ImageOpener(str(path)) as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
        return np.abs(np.asarray(raw["pixdim"][1:4], dtype=np.float64))
    except Exception:  # the checked header was readable, so fall back to it
        return np.asarray(img.header.get_zooms()[:3], dtype=np.float64)


def read_nifti_canonical(path: str | Path) -> np.ndarray:
    """Read a 3D NIfTI and reorient it to RAS+ (closest canonical), float32 (x, y, z)."""
    import nibabel as nib

    vol = read_nifti(path)
    ornt = nib.orientations.io_orientation(vol.affine)
    ras = nib.orientations.apply_orientation(vol.data, ornt)
    return np.ascontiguousarray(ras, dtype=np.float32)


# ---------------------------------------------------------------- fastMRI (HDF5)


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred, orthonormal 2D inverse FFT over the last two axes (fastMRI convention)."""
    axes = (-2, -1)
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


def center_crop_2d(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop the last two axes to ``size`` (clipped to what is there)."""
    h, w = x.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def kspace_to_image(kspace: np.ndarray, crop: tuple[int, int] = (320, 320)) -> np.ndarray:
    """Magnitude image from k-space: inverse FFT, root-sum-of-squares over coils, crop.

    ``kspace`` is (slices, coils, H, W) for multi-coil or (slices, H, W) single-coil.
    """
    img = np.abs(ifft2c(kspace))
    if kspace.ndim == 4:
        img = np.sqrt((img**2).sum(axis=1))
    return center_crop_2d(img, crop).astype(np.float32)


@dataclass
class FastMRIInfo:
    """What the slice index needs from a fastMRI file, read without the pixel data."""

    n_slices: int
    source: str  # the HDF5 key the image comes from
    contrast: str | None  # "PD", "PDFS" or None if the attribute is absent


def _open_h5(path: Path):
    import h5py

    _check_path(path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(path, f"not a readable HDF5 file ({err})") from err


def _pick_source(path: Path, f, source: str) -> str:
    keys = set(f.keys())
    if source == "auto":
        for key in (*FASTMRI_RECON_KEYS, "kspace"):
            if key in keys:
                return key
        raise DataError(
            path,
            f"has none of the keys {', '.join((*FASTMRI_RECON_KEYS, 'kspace'))} "
            f"(found: {sorted(keys)})",
        )
    if source not in keys:
        raise DataError(path, f"missing HDF5 key '{source}' (found: {sorted(keys)})")
    return source


def fastmri_info(path: str | Path, source: str = "auto") -> FastMRIInfo:
    """Inspect a fastMRI file: slice count, image source and acquisition contrast."""
    path = Path(path)
    with _open_h5(path) as f:
        key = _pick_source(path, f, source)
        ds = f[key]
        shape = tuple(ds.shape)
        if key == "kspace":
            if ds.ndim not in (3, 4):
                raise DataError(
                    path, f"'kspace' has shape {shape}, expected (slices, [coils,] H, W)"
                )
            if ds.dtype.kind != "c":
                raise DataError(path, f"'kspace' has dtype {ds.dtype}, expected complex")
        elif ds.ndim != 3:
            raise DataError(path, f"'{key}' has shape {shape}, expected (slices, H, W)")
        if 0 in shape:
            raise DataError(path, f"'{key}' has a zero-sized axis (shape {shape})")
        acq = f.attrs.get("acquisition")
        if isinstance(acq, bytes):
            acq = acq.decode()
        contrast = FASTMRI_ACQUISITIONS.get(str(acq)) if acq is not None else None
        return FastMRIInfo(n_slices=shape[0], source=key, contrast=contrast)


def read_fastmri(
    path: str | Path, source: str = "auto", crop: tuple[int, int] = (320, 320)
) -> np.ndarray:
    """Read a fastMRI volume as float32 (slices, H, W) magnitude images."""
    path = Path(path)
    info = fastmri_info(path, source)
    with _open_h5(path) as f:
        try:
            raw = f[info.source][()]
        except (OSError, KeyError) as err:
            raise DataError(path, f"corrupt or truncated dataset '{info.source}' ({err})") from err
    if info.source == "kspace":
        if not np.isfinite(raw).all():
            raise DataError(path, "'kspace' contains NaN/inf values")
        img = kspace_to_image(raw, crop)
    else:
        img = center_crop_2d(np.asarray(raw, dtype=np.float32), crop)
    check_values(path, img)
    return np.ascontiguousarray(img, dtype=np.float32)
