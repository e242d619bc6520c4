"""stage=predict on inputs acquired in k-space: the k-space consistency projection, the check of
an input's own resolution (a zero-filled export is said to be one) and SR of its acquired matrix."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mrsr.data.degrade import kspace_lowpass, kspace_truncate, normalise_with_range
from mrsr.data.readers import read_nifti
from mrsr.data.resolution import spectral_cutoff
from mrsr.data.sources import demo_dir
from mrsr.errors import DataError
from mrsr.ops import zerofill_upsample
from mrsr.tasks import predict as predict_mod
from tests.test_predict import save_sr_checkpoint


def _slab() -> np.ndarray:
    """Eight axial slices of the demo's held-out T1, in-plane 128 x 160."""
    return read_nifti(demo_dir() / "seg3d_T1.nii.gz").data[16:144, 40:200, 70:78]


def _save(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*zooms, 1.0])), str(path))
    return path


def _run(make_cfg, ckpt: Path, inp: Path, out: Path, *extra: str) -> dict:
    cfg = make_cfg("stage=predict", f"ckpt={ckpt}", f"input={inp}", f"output={out}", *extra)
    return predict_mod.predict(cfg)


def test_kspace_consistency_keeps_the_inputs_band(make_cfg, tmp_path: Path) -> None:
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt", bicubic_only=False)
    hr = _slab()
    lr = np.moveaxis(
        kspace_truncate(torch.from_numpy(np.moveaxis(hr, 2, 0))[:, None], 2)[:, 0].numpy(), 0, 2
    )
    inp = _save(tmp_path / "lr.nii.gz", lr)
    outs = {}
    for mode in ("none", "kspace"):
        out = tmp_path / f"sr_{mode}.nii.gz"
        result = _run(make_cfg, ckpt, inp, out, f"predict.consistency={mode}", "predict.axis=2")
        assert result["consistency"] == mode
        outs[mode] = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64)

    def band(v: np.ndarray) -> np.ndarray:
        return kspace_lowpass(torch.from_numpy(np.moveaxis(v, 2, 0))[:, None], 2).real[:, 0].numpy()

    lr_slices = np.moveaxis(lr, 2, 0)
    err = {m: np.linalg.norm(band(v) - lr_slices) / np.linalg.norm(lr) for m, v in outs.items()}
    # the projection holds up to the clamp at 0 and float32 (the untrained net's is far off)
    assert err["kspace"] < 2e-3 and err["none"] > 10 * err["kspace"], err


def test_zero_filled_input_is_said_to_be_and_its_acquired_matrix_super_resolved(
    make_cfg, tmp_path: Path, caplog
) -> None:
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")  # outputs bicubic
    hr = _slab()
    slices = torch.from_numpy(np.moveaxis(hr, 2, 0))[:, None].double()
    # a scanner's export: 64 x 80 acquired (central k-space, complex noise), zero-filled to 2x
    acq = kspace_lowpass(slices, 2)
    g = torch.Generator().manual_seed(0)
    acq = acq + 4.0 * torch.complex(
        torch.randn(acq.shape, generator=g, dtype=torch.float64),
        torch.randn(acq.shape, generator=g, dtype=torch.float64),
    )
    zf = (zerofill_upsample(acq.real, 2) + 1j * zerofill_upsample(acq.imag, 2)).abs()
    exported = np.moveaxis(zf[:, 0].numpy(), 0, 2)
    norm, _, _ = normalise_with_range(exported.astype(np.float32))
    cut = spectral_cutoff(np.moveaxis(norm, 2, 0))
    assert all(abs(c.fraction - 0.5) < 0.03 and c.factor == 2 for c in cut), cut
    native = spectral_cutoff(np.moveaxis(normalise_with_range(hr)[0], 2, 0))
    assert all(c.fraction == 1.0 and c.factor == 1 for c in native), native
    inp = _save(tmp_path / "exported.nii.gz", exported, (0.9, 0.9, 1.0))
    with caplog.at_level(logging.INFO, logger="mrsr"):
        result = _run(make_cfg, ckpt, inp, tmp_path / "plain.nii.gz", "predict.axis=2")
    assert result["interpolated"] and "looks interpolated" in caplog.text
    assert "predict.from_acquired=true" in caplog.text
    assert result["shape"] == [256, 320, 8]  # by default the user's grid is refined as asked
    caplog.clear()
    out = tmp_path / "acquired.nii.gz"
    with caplog.at_level(logging.INFO, logger="mrsr"):
        result = _run(make_cfg, ckpt, inp, out, "predict.axis=2", "predict.from_acquired=true")
    assert "super-resolving the acquired matrix" in caplog.text
    img = nib.load(str(out))
    # x2 SR of the 64 x 80 acquired matrix lands on the exported grid, voxel for voxel
    assert img.shape == exported.shape and np.allclose(img.affine, nib.load(str(inp)).affine)
    assert np.allclose(img.header.get_zooms(), (0.9, 0.9, 1.0))


def _numpy_zero_filled(hr: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """A scanner's export simulated without the package: per slice along ``axis``, numpy's
    centred 2D FFT, the central ``1/factor`` kept, zero-padded back, magnitude."""
    slices = np.moveaxis(hr, axis, 0).astype(np.float64)
    spec = np.fft.fftshift(np.fft.fft2(slices), axes=(1, 2))
    h, w = slices.shape[1:]
    keep = np.zeros_like(spec)
    ch, cw = h // (2 * factor), w // (2 * factor)
    keep[:, h // 2 - ch : h // 2 + ch, w // 2 - cw : w // 2 + cw] = spec[
        :, h // 2 - ch : h // 2 + ch, w // 2 - cw : w // 2 + cw
    ]
    out = np.abs(np.fft.ifft2(np.fft.ifftshift(keep, axes=(1, 2))))
    return np.moveaxis(out, 0, axis).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_acquired_matrix_in_every_storage_orientation(
    axis: int, make_cfg, tmp_path: Path, caplog
) -> None:
    """Thick slices stored along voxel axis 0, 1 or 2, zero-filled by numpy (not the package's
    operator): found interpolated, and the acquired matrix's SR lands on the input's grid."""
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")
    hr = np.moveaxis(_slab(), 2, axis)  # the 8 slices along ``axis``
    exported = _numpy_zero_filled(hr, 2, axis)
    zooms = [0.9, 0.9, 0.9]
    zooms[axis] = 3.0  # the thick axis: what predict's auto rule slices along
    inp = _save(tmp_path / "exported.nii.gz", exported, tuple(zooms))
    out = tmp_path / "acquired.nii.gz"
    with caplog.at_level(logging.INFO, logger="mrsr"):
        result = _run(make_cfg, ckpt, inp, out, "predict.from_acquired=true")
    assert result["axis"] == axis and result["interpolated"]
    assert all(abs(c - 0.5) < 0.03 for c in result["cutoff"]), result["cutoff"]
    img = nib.load(str(out))
    assert img.shape == exported.shape and np.allclose(img.affine, nib.load(str(inp)).affine)
    assert np.allclose(img.header.get_zooms(), zooms)


def test_from_acquired_true_without_a_whole_factor_is_refused(make_cfg, tmp_path: Path) -> None:
    """An image-space interpolation (bicubic x2) has no acquired matrix to recover: asked for
    one, predict refuses in one line instead of guessing."""
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")
    x = torch.from_numpy(np.moveaxis(_slab(), 2, 0))[:, None].float()
    up = torch.nn.functional.interpolate(kspace_truncate(x, 2), scale_factor=2, mode="bicubic")
    inp = _save(tmp_path / "bicubic.nii.gz", np.moveaxis(up[:, 0].numpy(), 0, 2))
    with pytest.raises(DataError, match="predict.from_acquired=false"):
        _run(
            make_cfg,
            ckpt,
            inp,
            tmp_path / "o.nii.gz",
            "predict.axis=2",
            "predict.from_acquired=true",
        )
    result = _run(make_cfg, ckpt, inp, tmp_path / "o.nii.gz", "predict.axis=2")
    assert result["interpolated"] and result["shape"] == [256, 320, 8]
