"""Rough edges a new user hit (issue 33): signed images, unwritable outputs, NIfTI units,
FreeSurfer .mgz files, quoting paths, Ctrl-C, long descriptions, run folders, quiet logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
