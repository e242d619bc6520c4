"""Shared fixtures: small IXI-named NIfTI files and fastMRI-layout HDF5 files written by the
tests themselves, and Hydra configs composed exactly as the command line composes them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mrsr.config import compose
from mrsr.data.phantoms import head_phantom as phantom

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MRSR_CACHE_DIR", tempfile.mkdtemp(prefix="mrsr-test-cache-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest on small CPUs

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def write_nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), dtype=np.int16) -> Path:
    import nibabel as nib

    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_zooms(zooms[: data.ndim])
    nib.save(img, str(path))
    return path


def make_ixi(root: Path, n_subjects: int = 6, contrasts=("T1", "T2"), shape=(40, 44, 12)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sites = ["Guys", "HH", "IOP"]
    for i in range(n_subjects):
        for j, c in enumerate(contrasts):
            name = f"IXI{i + 2:03d}-{sites[i % 3]}-{800 + i:04d}-{c}.nii.gz"
            write_nifti(root / name, phantom(shape, seed=10 * i + j, contrast=1.0 + 0.3 * j))
    return root


def fft2c(img: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(img, axes=axes), axes=axes, norm="ortho"), axes=axes
    )


def make_fastmri_file(
    path: Path,
    acquisition: str = "CORPD_FBK",
    n_slices: int = 4,
    size=(48, 40),
    coils: int = 3,
    crop=(32, 32),
    store_recon: bool = True,
    seed: int = 0,
) -> Path:
    """fastMRI multi-coil layout: kspace (slices, coils, H, W) + reconstruction_rss
    (slices, 32, 32)."""
    import h5py

    rng = np.random.default_rng(seed)
    img = phantom((n_slices, *size), seed=seed) / 1000.0
    sens = rng.uniform(0.5, 1.0, (coils, 1, 1))
    coil_imgs = img[:, None] * sens[None] * np.exp(1j * rng.uniform(0, np.pi, (coils, 1, 1)))[None]
    kspace = fft2c(coil_imgs).astype(np.complex64)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if store_recon:
            rss = np.sqrt((np.abs(coil_imgs) ** 2).sum(1))
            h, w = rss.shape[-2:]
            t, left = (h - crop[0]) // 2, (w - crop[1]) // 2
            f.create_dataset(
                "reconstruction_rss",
                data=rss[:, t : t + crop[0], left : left + crop[1]].astype(np.float32),
            )
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = path.stem
    return path


def make_fastmri(root: Path, n_files: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        acq = "CORPD_FBK" if i % 2 == 0 else "CORPDFS_FBK"
        make_fastmri_file(root / f"file{1000 + i}.h5", acq, seed=i)
    return root


@pytest.fixture
def ixi_dir(tmp_path: Path) -> Path:
    return make_ixi(tmp_path / "IXI")


@pytest.fixture
def fastmri_dir(tmp_path: Path) -> Path:
    return make_fastmri(tmp_path / "fastmri")


def compose_cfg(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose the package's config as ``python -m mrsr.run`` would, writing into tmp_path."""
    return compose(overrides or [], output_dir=tmp_path / "run")


@pytest.fixture
def make_cfg(tmp_path: Path):
    def _make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, list(overrides))

    yield _make
    GlobalHydra.instance().clear()


def run_labels(
    loss: str, model: str | None = None, seed: int | None = 42, updates: int | None = 300
) -> dict:
    """What a stage-sr run's results rows say about the run (labels from the config files)."""
    import yaml

    conf = Path(__file__).resolve().parents[1] / "conf"
    out = {
        "loss": loss,
        "loss_label": yaml.safe_load((conf / "loss" / f"{loss}.yaml").read_text())["label"],
        "seed": seed,
        "updates": updates,
        "start_updates": 0,
        "start_loss": None,
    }
    if model:
        out |= {
            "model": model,
            "model_label": yaml.safe_load((conf / "model" / f"{model}.yaml").read_text())["label"],
        }
    return out
