"""Rough edges a new user hit (issue 33): signed images, unwritable outputs, NIfTI units,
FreeSurfer .mgz files, quoting paths, Ctrl-C, long descriptions, run folders, quiet logs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsr import inference
from mrsr.errors import ConfigError, DataError
from mrsr.files import check_writable
from mrsr.run import check_quoting
from tests.conftest import phantom


def mrsr(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """``python -m mrsr.run args`` in the background, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "mrsr.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


# -- run folders -----------------------------------------------------------------------------


def test_runs_started_together_get_folders_of_their_own(tmp_path: Path) -> None:
    env = {"MRSR_OUTPUT_DIR": str(tmp_path / "outputs")}
    procs = [
        mrsr(
            "stage=throughplane",
            f"input={tmp_path / f'missing{i}.nii.gz'}",
            "output=o.nii.gz",
            env=env,
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.communicate(timeout=300)
        assert proc.returncode == 2
    folders = sorted((tmp_path / "outputs" / "throughplane").iterdir())
    assert len(folders) == 2
    for folder in folders:
        # <date>_<time>_<microseconds>: sortable by start time
        date, time, micro = folder.name.split("_")
        assert len(date) == 10 and len(time) == 8 and len(micro) == 6
        log = (folder / "run.log").read_text()
        assert log.count("file not found") == 1, log


def test_a_sweep_gets_one_folder_per_job(tmp_path: Path) -> None:
    proc = mrsr(
        "-m",
        "stage=throughplane",
        f"input={tmp_path / 'a.nii.gz'},{tmp_path / 'b.nii.gz'}",
        "output=o.nii.gz",
        env={"MRSR_OUTPUT_DIR": str(tmp_path / "multirun")},
    )
    proc.communicate(timeout=300)
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert len(sweep.name.split("_")) == 3
    for job in ("0", "1"):
        assert "file not found" in (sweep / job / "FAILED").read_text()


# -- signed images ---------------------------------------------------------------------------


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(
        nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), path
    )
    return path


def test_a_phase_map_is_refused_in_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    phase = _save(tmp_path / "phase.nii.gz", rng.uniform(-np.pi, np.pi, (16, 16, 8)))
    with pytest.raises(DataError) as err:
        inference.read_input(phase, axis=2)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{phase}: signed intensities (")
    assert "magnitude images" in msg and "pass the magnitude image" in msg
    # a field map inside a mask (most voxels zero) is signed too
    field = np.zeros((16, 16, 8))
    field[4:12, 4:12] = rng.normal(0, 50, (8, 8, 8))
    with pytest.raises(DataError, match="signed intensities"):
        inference.read_input(_save(tmp_path / "b0.nii.gz", field), axis=2)


def test_a_magnitude_image_with_a_few_negative_voxels_passes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = phantom((16, 16, 8), seed=1)
    ringing = vol.copy()
    edge = rng.choice(vol.size, vol.size // 50, replace=False)  # 2% of voxels, up to -9%
    ringing.flat[edge] = -rng.uniform(0, 0.09, edge.size) * vol.max()
    # a subtracted noise offset: the background is noise around zero (half of it negative)
    offset = vol + rng.normal(0, 0.02 * vol.max(), vol.shape) * (vol == 0)
    for name, data in (("ringing", ringing), ("offset", offset)):
        scan = inference.read_input(_save(tmp_path / f"{name}.nii.gz", data), axis=2)
        assert float(scan.data.min()) < 0


# -- NIfTI spatial units ---------------------------------------------------------------------


@pytest.mark.parametrize("unit,per_mm", [("micron", 1000.0), ("meter", 0.001), ("mm", 1.0)])
def test_voxel_sizes_are_read_in_mm_and_written_in_the_files_units(
    tmp_path: Path, unit: str, per_mm: float
) -> None:
    affine = np.diag([1.0 * per_mm, 1.0 * per_mm, 4.0 * per_mm, 1.0])
    affine[:3, 3] = [-20 * per_mm, 5 * per_mm, 3 * per_mm]
    img = nib.Nifti1Image(phantom((12, 12, 4), seed=2).astype(np.float32), affine)
    img.header.set_xyzt_units(unit, "sec")
    inp = tmp_path / "in.nii.gz"
    nib.save(img, inp)
    scan = inference.read_input(inp)
    assert np.allclose(scan.zooms, (1.0, 1.0, 4.0))
    assert scan.slicing.axis == 2 and "thick" in scan.slicing.reason
    assert np.allclose(scan.affine, affine)  # in the file's units
    out = tmp_path / "out.nii.gz"
    refined = inference.upsampled_affine(scan.affine, 2, scan.inplane)
    inference.write_nifti_atomic(out, np.zeros((24, 24, 4)), refined, scan.header, note="x")
    written = nib.load(out)
    assert written.header.get_xyzt_units() == (unit, "sec")
    assert np.allclose(written.affine, refined)
    assert np.allclose(written.header.get_zooms(), np.array([0.5, 0.5, 4.0]) * per_mm)


def test_implausible_voxel_sizes_say_the_units(tmp_path: Path) -> None:
    img = nib.Nifti1Image(phantom((8, 8, 4), seed=2).astype(np.float32), np.diag([2, 2, 4, 1.0]))
    img.header.set_xyzt_units("meter")
    nib.save(img, tmp_path / "m.nii.gz")
    with pytest.raises(DataError, match=r"\(2000.0, 2000.0, 4000.0\) mm \(stored in meters\)"):
        inference.read_input(tmp_path / "m.nii.gz")


# -- FreeSurfer .mgz -------------------------------------------------------------------------


def oblique_affine(zooms=(0.5, 0.5, 2.0)) -> np.ndarray:
    c, s = np.cos(0.4), np.sin(0.4)
    a = np.eye(4)
    a[:3, :3] = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]) @ np.diag(zooms)
    a[:3, 3] = [12.0, -30.0, 7.5]
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_mgz_is_read_and_written_as_mgz_or_nifti(tmp_path: Path, dtype) -> None:
    vol = phantom((10, 12, 5), seed=4).astype(dtype)
    inp = tmp_path / "T1.mgz"
    nib.save(nib.MGHImage(vol, oblique_affine()), inp)
    scan = inference.read_input(inp)
    assert np.allclose(scan.zooms, (0.5, 0.5, 2.0), atol=1e-6) and scan.slicing.axis == 2
    assert np.allclose(scan.affine, oblique_affine(), atol=1e-5)
    assert np.array_equal(scan.data, vol.astype(np.float32))
    refined = inference.upsampled_affine(scan.affine, 2, scan.inplane)
    result = np.repeat(np.repeat(scan.data, 2, 0), 2, 1)
    for name in ("sr.mgz", "sr.nii.gz"):
        inference.write_nifti_atomic(tmp_path / name, result, refined, scan.header, "input")
        out = nib.load(tmp_path / name)
        assert np.allclose(out.affine, refined, atol=1e-5), name
        assert np.allclose(out.header.get_zooms()[:3], (0.25, 0.25, 2.0), atol=1e-6)
        assert np.allclose(out.get_fdata(), result, atol=1e-3 * float(vol.max()))
        assert np.dtype(out.get_data_dtype()).newbyteorder("=") == np.dtype(dtype)
    nii = nib.load(tmp_path / "sr.nii.gz").header
    assert (int(nii["sform_code"]), int(nii["qform_code"])) == (1, 1)
    assert nii.get_xyzt_units()[0] == "mm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T1.mgz", "sr.mgz", "sr.nii.gz"]


def test_nifti_in_microns_written_as_mgz_is_in_mm(tmp_path: Path) -> None:
    microns = oblique_affine()
    microns[:3] *= 1000.0
    img = nib.Nifti1Image(phantom((8, 8, 4), seed=1), microns)
    img.header.set_xyzt_units("micron")
    nib.save(img, tmp_path / "um.nii.gz")
    scan = inference.read_input(tmp_path / "um.nii.gz")
    inference.write_nifti_atomic(tmp_path / "o.mgz", scan.data, scan.affine, scan.header)
    assert np.allclose(nib.load(tmp_path / "o.mgz").affine, oblique_affine(), atol=1e-5)


# -- outputs that cannot be written ----------------------------------------------------------


def _read_only(folder: Path) -> Path:
    """``folder`` made read-only; skips where that does not stop this process (root)."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    pytest.skip("chmod does not stop this user (root) from writing")


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    inp = _save(tmp_path / "in.nii.gz", phantom((8, 8, 4), seed=1))
    folder = _read_only(tmp_path / "ro")
    try:
        with pytest.raises(
            ConfigError, match=r"^output: cannot write in .*ro \(Permission denied\)"
        ):
            inference.check_paths(inp, folder / "o.nii.gz", False)
        with pytest.raises(ConfigError, match="paths.output_dir: cannot write in"):
            check_writable(folder / "run" / "checkpoints", "paths.output_dir")
    finally:
        folder.chmod(0o755)


def test_check_writable_tries_a_write(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    check_writable(tmp_path / "new" / "run", "paths.output_dir")  # created later: its parent
    assert sorted(tmp_path.iterdir()) == []  # nothing left behind
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^output: .*file is not a folder"):
        check_writable(tmp_path / "file" / "sub", "output")

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    inp = _save(tmp_path / "in.nii.gz", phantom((8, 8, 4), seed=1))
    with pytest.raises(ConfigError) as err:
        inference.check_paths(inp, tmp_path / "o.nii.gz", False)
    assert str(err.value) == (
        f"output: cannot write in {tmp_path} (Permission denied): choose a folder you can "
        "write in, or make it writable"
    )


def test_an_unwritable_run_folder_stops_a_training_stage_at_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    run = tmp_path / "run"
    proc = mrsr(
        "stage=sr",
        "debug=fast",
        f"hydra.run.dir={run}",
        f"paths.output_dir={tmp_path / 'file' / 'run'}",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    line = f"mrsr: paths.output_dir: {tmp_path / 'file'} is not a folder, so"
    assert err.strip().splitlines()[-1].startswith(line)
    assert line in (run / "run.log").read_text()
    assert not (run / "checkpoints").exists()
    # Hydra's own run folder: one line, before Hydra's traceback
    proc = mrsr("stage=sr", f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and err.strip().startswith("mrsr: hydra.run.dir (the run folder")
    assert len(err.strip().splitlines()) == 1


# -- values Hydra reads only in quotes -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Müller scan.nii.gz",
        "/data/é.nii",
        "/data/a(1).nii",
        "/d/it's.nii",
        "/d/$x ü.nii",
        "/d/#1.nii",
    ],
)
def test_a_value_hydra_reads_only_in_quotes_gets_the_quoted_form(value: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    msg = check_quoting(["stage=predict", f"input={value}"])
    assert msg is not None and "\n" not in msg
    assert msg.startswith(f"mrsr: input={value}: Hydra reads a value with non-ASCII letters")
    suggestion = msg.split(" only in quotes: pass ", 1)[1]
    (arg,) = shlex.split(suggestion)  # what the shell hands over
    assert OverridesParser.create().parse_override(arg).value() == value
    assert check_quoting([arg]) is None


def test_plain_and_quoted_values_pass_the_quoting_check() -> None:
    assert check_quoting(["stage=sr", "input=/data/scan_1.nii.gz", "a.b=[1,2]", "-m"]) is None
    assert check_quoting(["input='Müller scan.nii.gz'"]) is None


def test_the_quoted_path_reaches_the_stage(tmp_path: Path) -> None:
    path = tmp_path / "Müller scan.nii.gz"
    proc = mrsr("stage=throughplane", f"input={path}", "output=o.nii.gz")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1
    suggestion = err.strip().split(" only in quotes: pass ", 1)[1]
    proc = mrsr("stage=throughplane", *shlex.split(suggestion), "output=o.nii.gz")
    _, err = proc.communicate(timeout=300)
    assert err.strip().splitlines()[-1] == f"mrsr: input={path}: file not found"


# -- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_status_130_and_leaves_no_output(tmp_path: Path) -> None:
    import signal
    import time

    folder = tmp_path / "scans"
    folder.mkdir()
    vol = phantom((192, 192, 96), seed=1)  # some seconds of super-resolving on a CPU
    _save(folder / "in.nii.gz", vol, np.diag([1.0, 1.0, 3.0, 1.0]))
    run = tmp_path / "run"
    proc = mrsr(
        "stage=predict",
        f"input={folder / 'in.nii.gz'}",
        f"output={folder / 'sr.nii.gz'}",
        f"hydra.run.dir={run}",
        env={"OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while "slicing axis" not in (
        (run / "run.log").read_text() if (run / "run.log").exists() else ""
    ):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # inside the network passes
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["mrsr: interrupted"]
    assert "mrsr: interrupted" in (run / "run.log").read_text()
    assert [p.name for p in folder.iterdir()] == ["in.nii.gz"]  # no output, no temporary file


# -- a quiet stage=throughplane log ----------------------------------------------------------

LIGHTNING_LINES = (
    "GPU available",
    "TPU available",
    "Seed set to",
    "Loading `train_dataloader`",
    "| Name",
    "`Trainer.fit` stopped",
)


def test_throughplane_log_has_no_lightning_chatter(tmp_path: Path) -> None:
    inp = _save(
        tmp_path / "thick.nii.gz", phantom((64, 64, 16), seed=1) + 10, np.diag([1, 1, 4, 1.0])
    )
    run = tmp_path / "run"
    proc = mrsr(
        "stage=throughplane",
        f"input={inp}",
        f"output={tmp_path / 'iso.nii.gz'}",
        f"hydra.run.dir={run}",
        "trainer.max_steps=2",
        "stage.module.generator.n_blocks=1",
        "stage.module.generator.n_feats=8",
        "throughplane.patch_size=32",
        "throughplane.batch_size=4",
        "~logger",
        env={"OMP_NUM_THREADS": "1"},
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    log = (run / "run.log").read_text()
    assert "thick.nii.gz -> iso.nii.gz" in log and "step 2: val PSNR" in log
    for line in LIGHTNING_LINES:
        assert line not in log + out + err, line


def test_quiet_lightning_keeps_warnings_and_restores_levels(caplog) -> None:
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from mrsr.tasks.throughplane import quiet_lightning

    name = "lightning.pytorch.utilities.rank_zero"
    before = logging.getLogger(name).level
    with caplog.at_level(logging.INFO), quiet_lightning():
        rank_zero_info("GPU available: False")
        logging.getLogger(name).warning("something that matters")
    messages = [r.getMessage() for r in caplog.records]
    assert "something that matters" in messages and "GPU available: False" not in messages
    assert logging.getLogger(name).level == before


# -- stage=predict end to end ----------------------------------------------------------------


@pytest.fixture
def sr_ckpt(make_cfg, tmp_path: Path) -> Path:
    from tests.test_predict import save_sr_checkpoint

    return save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")


def _predict(make_cfg, ckpt: Path, inp: Path, out: Path, *extra: str) -> None:
    from mrsr.tasks.predict import predict

    predict(make_cfg("stage=predict", f"ckpt={ckpt}", f"input={inp}", f"output={out}", *extra))


def test_predict_mgz_to_mgz_and_to_nifti(make_cfg, sr_ckpt: Path, tmp_path: Path) -> None:
    inp = tmp_path / "T1.mgz"
    nib.save(nib.MGHImage(phantom((12, 12, 5), seed=4) + 10, oblique_affine()), inp)
    want = inference.upsampled_affine(oblique_affine(), 2, (0, 1))
    for name in ("sr.mgz", "sr.nii.gz"):
        _predict(make_cfg, sr_ckpt, inp, tmp_path / name)
        out = nib.load(tmp_path / name)
        assert isinstance(out, nib.MGHImage if name.endswith(".mgz") else nib.Nifti1Image)
        assert out.shape == (24, 24, 5) and np.allclose(out.affine, want, atol=1e-4)
        assert np.allclose(out.header.get_zooms()[:3], (0.25, 0.25, 2.0), atol=1e-6)


def test_predict_keeps_a_files_units(make_cfg, sr_ckpt: Path, tmp_path: Path) -> None:
    microns = oblique_affine((1.0, 1.0, 4.0))
    microns[:3] *= 1000.0
    img = nib.Nifti1Image(phantom((12, 12, 4), seed=2) + 10, microns)
    img.header.set_xyzt_units("micron", "sec")
    nib.save(img, tmp_path / "um.nii.gz")
    _predict(make_cfg, sr_ckpt, tmp_path / "um.nii.gz", tmp_path / "o.nii.gz")  # axis: auto
    out = nib.load(tmp_path / "o.nii.gz")
    assert out.header.get_xyzt_units() == ("micron", "sec")
    assert np.allclose(out.affine, inference.upsampled_affine(microns, 2, (0, 1)), atol=1e-3)
    assert np.allclose(out.header.get_zooms(), (500.0, 500.0, 4000.0), atol=1e-3)


def test_predict_refuses_a_phase_map_from_the_command_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    phase = _save(tmp_path / "phase.nii.gz", rng.uniform(-np.pi, np.pi, (16, 16, 8)))
    run = tmp_path / "run"
    proc = mrsr(
        "stage=predict",
        f"input={phase}",
        f"output={tmp_path / 'o.nii.gz'}",
        f"hydra.run.dir={run}",
        "predict.axis=2",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    (line,) = err.strip().splitlines()
    assert (
        line.startswith(f"mrsr: {phase}: signed intensities")
        and line in (run / "run.log").read_text()
    )
    assert not (tmp_path / "o.nii.gz").exists()
