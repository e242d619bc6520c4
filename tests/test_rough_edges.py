"""Rough edges a new user hit (issue 33): signed images, unwritable outputs, NIfTI units,
FreeSurfer .mgz files, quoting paths, Ctrl-C, long descriptions, run folders, quiet logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsr import inference
from mrsr.errors import DataError
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
