"""``stage=predict``: shapes, affines, intensities, tiling, refusals and atomic output."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrsr import inference
from mrsr.data.degrade import intensity_range, normalise_volume
from mrsr.errors import DataError, MrsrError
from mrsr.nets.srresnet import SRResNet
from mrsr.tasks import predict as predict_mod
from tests.conftest import make_fastmri_file, phantom

SMALL = [
    "model=srresnet_small",
    "model.n_blocks=1",
    "model.n_feats=8",
    "model.residual_bicubic=true",
]


def save_sr_checkpoint(make_cfg, path: Path, scale: int = 2, bicubic_only: bool = True) -> Path:
    """A stage-sr checkpoint written as training writes it; with ``bicubic_only`` its EMA
    generator outputs exactly the bicubic up-sampling (zero residual)."""
    from mrsr.building import build_module

    cfg = make_cfg("stage=sr", "loss=l1", f"scale={scale}", *SMALL)
    module = build_module(cfg)
    if bicubic_only:
        for m in (module.generator, module.ema.module):
            torch.nn.init.zeros_(m.last_conv.weight)
            torch.nn.init.zeros_(m.last_conv.bias)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def rotated_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([1.0, 2.0, 3.0])
    a[:3, 3] = [-10.0, 5.0, 2.5]
    return a


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


@pytest.fixture
def setup(make_cfg, tmp_path: Path):
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")
    vol = phantom((12, 10, 5), seed=3) + 50.0
    inp = write_volume(tmp_path / "in.nii.gz", vol, rotated_affine())

    def run(*extra: str, output: Path | None = None, input: Path = inp):
        out = output or tmp_path / "out.nii.gz"
        # the fixture's voxels (1 x 2 x 3 mm) are not square in any plane: the axis is given
        cfg = make_cfg(
            "stage=predict",
            f"ckpt={ckpt}",
            f"input={input}",
            f"output={out}",
            "predict.axis=2",
            *extra,
        )
        return predict_mod.predict(cfg), out

    return run, vol, inp, tmp_path


def world(affine: np.ndarray, idx) -> np.ndarray:
    return (affine @ np.array([*idx, 1.0]))[:3]


@pytest.mark.parametrize("axis", [2, 0])
def test_predict_shape_affine_and_intensities(setup, axis: int) -> None:
    run, vol, _, _ = setup
    result, out = run(f"predict.axis={axis}", "predict.batch_size=2")
    img = nib.load(str(out))
    shape = [d * 2 if a != axis else d for a, d in enumerate(vol.shape)]
    assert list(img.shape) == shape == result["shape"]
    a_in, a_out = rotated_affine(), img.affine
    zooms = [z / 2 if a != axis else z for a, z in enumerate((1.0, 2.0, 3.0))]
    assert np.allclose(img.header.get_zooms(), zooms, atol=1e-5)
    # new voxel i' lies at old continuous index (i' + 0.5) / 2 - 0.5 on the in-plane axes
    for new in [(0, 0, 0), (3, 5, 1), (7, 2, 4)]:
        old = [(i + 0.5) / 2 - 0.5 if a != axis else i for a, i in enumerate(new)]
        assert np.allclose(world(a_out, new), world(a_in, old), atol=1e-4)
    # zero-residual generator = bicubic on the normalised scale, mapped back to the input range
    lo, hi = intensity_range(vol.astype(np.float32))
    slices = torch.from_numpy(np.moveaxis(normalise_volume(vol.astype(np.float32)), axis, 0))[
        :, None
    ]
    bic = F.interpolate(slices, scale_factor=2, mode="bicubic", align_corners=False).clamp(min=0)
    expect = np.moveaxis(bic[:, 0].numpy(), 0, axis) * (hi - lo) + lo
    assert np.allclose(np.asarray(img.dataobj), expect, atol=1e-3 * (hi - lo))


def test_predict_2d_and_fastmri(setup, make_cfg, tmp_path: Path) -> None:
    run, vol, _, _ = setup
    inp2d = write_volume(tmp_path / "slice.nii", vol[:, :, 2], rotated_affine())
    result, out = run(output=tmp_path / "slice_sr.nii", input=inp2d)
    img = nib.load(str(out))
    assert img.shape == (24, 20)
    assert np.allclose(
        world(img.affine, (0, 0, 0)), world(rotated_affine(), (-0.25, -0.25, 0)), atol=1e-4
    )
    h5 = make_fastmri_file(tmp_path / "knee.h5", n_slices=3)
    result, out = run(output=tmp_path / "knee_sr.nii.gz", input=h5)
    img = nib.load(str(out))
    assert img.shape == (3, 64, 64)
    assert np.allclose(img.header.get_zooms(), (1.0, 0.5, 0.5))


def test_tiled_equals_whole_image() -> None:
    torch.manual_seed(0)
    net = SRResNet(2, n_blocks=0, n_feats=8).eval()  # receptive radius 8 LR pixels
    x = torch.rand(2, 1, 50, 37)
    with torch.no_grad():
        whole = net(x)
        tiled = inference.sr_tiled(net, x, 2, tile=24, overlap=16)
        small = inference.sr_tiled(net, x, 2, tile=20, overlap=4)
    assert torch.allclose(whole, tiled, atol=1e-5)
    assert small.shape == whole.shape and not torch.allclose(whole, small, atol=1e-5)


def test_predict_refusals(setup, tmp_path: Path) -> None:
    run, vol, inp, _ = setup
    with pytest.raises(MrsrError, match="is the input"):
        run(output=inp)
    _, out = run()
    stamp = out.stat().st_mtime_ns
    with pytest.raises(MrsrError, match="overwrite=true"):
        run()
    assert out.stat().st_mtime_ns == stamp
    run("overwrite=true")
    with pytest.raises(MrsrError, match="does not exist"):
        run(output=tmp_path / "missing" / "x.nii.gz")
    with pytest.raises(MrsrError, match="NIfTI"):
        run(output=tmp_path / "x.png")
    bad = write_volume(tmp_path / "4d.nii.gz", np.random.rand(6, 6, 3, 2), np.eye(4))
    with pytest.raises(DataError, match=r"is 4D .*pass predict.volume=<0..1>"):
        run(output=tmp_path / "y.nii.gz", input=bad)
    assert not (tmp_path / "y.nii.gz").exists()


def test_failure_mid_volume_leaves_no_output(setup, monkeypatch, tmp_path: Path) -> None:
    run, *_ = setup
    real = inference.sr_tiled
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "sr_tiled", flaky)
    with pytest.raises(RuntimeError):
        run("predict.batch_size=2")
    assert calls["n"] == 2
    monkeypatch.setattr(inference, "sr_tiled", real)

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        run()
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == []


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Outputs are written atomically through a private temporary file, but end up with the
    permissions any other new file gets (0666 & ~umask), not 0600."""
    import os
    import stat

    from mrsr.files import atomic_write_text

    umask = os.umask(0o022)
    try:
        inference.write_nifti_atomic(
            tmp_path / "out.nii.gz", np.ones((4, 4, 2), np.float32), np.eye(4)
        )
        atomic_write_text(tmp_path / "results.json", "[]")
    finally:
        os.umask(umask)
    for name in ("out.nii.gz", "results.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    # no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "results.json"]
    assert nib.load(tmp_path / "out.nii.gz").shape == (4, 4, 2)
