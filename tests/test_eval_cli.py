"""``python -m mrsr.run stage=eval`` end to end, as a user runs it (subprocess, other cwd)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrsr.data.datamodule import DemoDataModule, IXIDataModule
from mrsr.metrics import SRMetrics
from mrsr.ops import upsample
from tests.conftest import make_fastmri, make_ixi


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("MRSR_OUTPUT_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mrsr.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _reference(dm) -> dict[str, float]:
    dm.setup("test")
    m = SRMetrics()
    for lr, hr, meta in dm.test_dataloader():
        m.update(upsample(lr, dm.scale, "bicubic"), hr, meta.volume_idx, meta.slice)
    return m.compute()


def _read_results(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "results.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    return rows, csv_rows


def test_eval_demo_end_to_end(tmp_path: Path) -> None:
    cwd, run_dir = tmp_path / "elsewhere", tmp_path / "run"
    cwd.mkdir()
    proc = run_cli(
        "stage=eval", "model=bicubic", "data=demo", "scale=2", f"hydra.run.dir={run_dir}", cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for word in ("PSNR", "SSIM", "NMSE", "bicubic"):
        assert word in proc.stdout
    rows, csv_rows = _read_results(run_dir)
    assert len(rows) == 1 and rows[0]["method"] == "bicubic" and rows[0]["scale"] == 2
    ref = _reference(DemoDataModule(scale=2, degradation="bicubic"))
    for k in ("psnr", "ssim", "nmse", "psnr_vol", "nmse_vol", "n_slices"):
        assert rows[0][k] == pytest.approx(ref[k], rel=1e-6), k
        assert float(csv_rows[0][k]) == pytest.approx(ref[k], rel=1e-6), k
    assert f"{ref['psnr']:.2f}" in proc.stdout
    assert 25 < rows[0]["psnr"] < 45 and 0.8 < rows[0]["ssim"] < 1
    # realism, structure and consistency: bicubic up-sampling is blur, consistent with its input
    assert (
        rows[0]["hf_power"] < -0.3
        and 0.5 < rows[0]["edge_f1"] < 1
        and 0.5 < rows[0]["tissue_dice"] < 1
    )
    assert (
        0 < rows[0]["redeg"] < 0.1
        and rows[0]["grad_w1"] > 0
        and rows[0]["hfen_07"] > rows[0]["hfen"]
    )
    assert not any(cwd.iterdir()), "nothing may be written into the working directory"


def test_eval_ixi_end_to_end(tmp_path: Path) -> None:
    make_ixi(tmp_path / "data" / "IXI", n_subjects=6, contrasts=("T1",), shape=(40, 44, 12))
    listing = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "data" / "IXI").iterdir())
    cwd, run_dir = tmp_path / "elsewhere", tmp_path / "run"
    cwd.mkdir()
    proc = run_cli(
        "stage=eval",
        "model=bicubic",
        "data=ixi",
        f"paths.data_dir={tmp_path / 'data'}",
        "scale=4",
        "data.crop=[40,44,12]",
        "data.num_workers=0",
        f"hydra.run.dir={run_dir}",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IXI x4" in proc.stdout
    rows, _ = _read_results(run_dir)
    dm = IXIDataModule(
        root=str(tmp_path / "data" / "IXI"), scale=4, crop=(40, 44, 12), split=(500, 70, 6)
    )
    ref = _reference(dm)
    assert rows[0]["dataset"] == "IXI" and rows[0]["n_volumes"] == ref["n_volumes"] >= 1
    for k in ("psnr", "ssim", "nmse"):
        assert rows[0][k] == pytest.approx(ref[k], rel=1e-6), k
    assert (
        sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "data" / "IXI").iterdir())
        == listing
    )


def test_eval_fastmri_folder_of_two_files(tmp_path: Path) -> None:
    """`data.split=all` scores every file of a folder too small to split (here: two)."""
    make_fastmri(tmp_path / "data" / "fastmri", n_files=2)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "stage=eval",
        "model=bicubic",
        "data=fastmri",
        f"paths.data_dir={tmp_path / 'data'}",
        "data.split=all",
        "data.fastmri_crop=[32,32]",
        "data.num_workers=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows, _ = _read_results(run_dir)
    assert rows[0]["dataset"] == "fastMRI" and rows[0]["n_volumes"] == 2
    assert 15 < rows[0]["psnr"] < 60


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stage=nonsense"], "nonsense"),
        (["stage=eval", "model=bicubic", "data=nonsense"], "nonsense"),
        (["stage=eval", "model=bicubic", "scale=3"], "scale=3"),
        (
            ["stage=eval", "model=bicubic", "data=ixi", "paths.data_dir=/nonexistent/dir"],
            "/nonexistent/dir",
        ),
        (["stage=eval", "model=bicubic", "scale=8"], "scale=8"),
        (["stage=eval", "model=bicubic", "data.num_workers=abc"], "data.num_workers"),
        (["stage=eval", "model=bicubic", "data.flips=3"], "expected true/false"),
        (["stage=eval", "model=bicubic", "nosuchkey=1"], "nosuchkey"),
        (["stage=predict", "ckpt=missing.ckpt", "output=out.nii.gz"], "input=... is required"),
        (["stage=sr", "ckpt_path=/nonexistent/last.ckpt"], "checkpoint not found"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert needle in _one_line_error(proc)


def test_cli_help_lists_groups(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in (
        "stage",
        "data",
        "model",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "experiment",
        "debug",
    ):
        assert f"{group}:" in proc.stdout, group
    for option in ("demo", "ixi", "fastmri", "bicubic", "eval"):
        assert option in proc.stdout


def test_eval_of_a_checkpoint_scores_it_beside_both_classical_baselines(
    tmp_path: Path, make_cfg, caplog
) -> None:
    """A checkpoint is scored beside bicubic and zero-filling, and the log states its gain over
    the better one; on k-space LR the better one is zero-filling."""
    import logging

    from mrsr.tasks.evaluate import evaluate
    from tests.test_predict import save_sr_checkpoint

    make_ixi(tmp_path / "data" / "IXI", n_subjects=6, contrasts=("T1",), shape=(40, 44, 12))
    ckpt = save_sr_checkpoint(make_cfg, tmp_path / "sr.ckpt")  # outputs bicubic exactly
    cfg = make_cfg(
        "stage=eval",
        f"ckpt={ckpt}",
        "data=ixi",
        f"paths.data_dir={tmp_path / 'data'}",
        "degradation=kspace",
        "data.crop=[40,44,12]",
        "data.num_workers=0",
    )
    with caplog.at_level(logging.INFO, logger="mrsr"):
        rows = {r["method"]: r for r in evaluate(cfg)["rows"]}
    assert set(rows) == {"sr", "bicubic", "zerofill"}
    assert all(r["degradation"] == "kspace" for r in rows.values())
    assert rows["sr"]["psnr"] == pytest.approx(rows["bicubic"]["psnr"], abs=1e-3)
    assert rows["zerofill"]["psnr"] > rows["bicubic"]["psnr"]
    gain = rows["sr"]["psnr"] - rows["zerofill"]["psnr"]
    assert f"{gain:+.2f} dB PSNR over the best classical baseline for this LR (zerofill)" in (
        caplog.text
    )
    assert "trained on bicubic LR images, evaluated here on kspace ones" in caplog.text
