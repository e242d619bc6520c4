"""The whole-experiment layer: multirun sweeps, the chained pipeline and the collector."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrsr.labels import L1_PHASE
from mrsr.report import tables
from mrsr.tasks.pipeline import extractor_key, needed_extractors, pipeline
from tests.conftest import run_labels

ROOT = Path(__file__).resolve().parents[1]
# Tiny data: a 96 x 96 in-plane crop of 12 axial slices of the demo volumes.
TINY_DATA = ["data.crop=[96,96,12]", "data.eval_batch_size=4"]
FAST_SR = [
    "model=srresnet_small",
    "model.n_blocks=1",
    "sr.val_check_interval=10",
    "sr.batch_size=4",
    "sr.train_crop=32",
    "sr.ema_decay=0",
    "callbacks.progress_bar=null",
]


def _mrsr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "mrsr.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_multirun_sweep_gives_one_folder_per_job_and_the_table_matches(tmp_path: Path) -> None:
    """scale=2,4 x max_steps=20,-1: jobs 1 and 3 fail (no length), 0 and 2 still finish."""
    sweep = tmp_path / "sweep"
    proc = _mrsr(
        "-m",
        "stage=sr",
        "loss=l1",
        "scale=2,4",
        *FAST_SR,
        *TINY_DATA,
        "sr.max_steps=20,-1",
        "sr.max_epochs=-1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    assert "max_steps or max_epochs" in (sweep / "1" / "FAILED").read_text()
    assert (sweep / "3" / "FAILED").is_file()
    finished = [sweep / j for j in ("0", "2")]
    for job in finished:
        assert (job / "FINISHED.json").is_file() and not (job / "FAILED").exists()

    rows = tables.table_rows(tables.collect(sweep))
    assert {(r["method"], r["scale"]) for r in rows} == {
        ("bicubic", 2),
        ("bicubic", 4),
        ("zerofill", 2),
        ("zerofill", 4),
        ("l1", 2),
        ("l1", 4),
    }
    for job in finished:
        results = json.loads((job / "results.json").read_text())
        scale = results[0]["scale"]
        for res in results:
            method = "l1" if res["method"] == "sr" else res["method"]
            got = next(r for r in rows if r["method"] == method and r["scale"] == scale)
            for m in ("psnr", "ssim", "nmse"):
                assert got[m] == pytest.approx(res[f"{m}_vol"], rel=1e-12)
                assert got[f"{m}_std"] == pytest.approx(res[f"{m}_vol_std"], rel=1e-12)

    out = tmp_path / "report"
    assert tables.main([str(sweep), "--out", str(out), "--no-figure"]) == 0
    md = (out / "table.md").read_text()
    x2 = json.loads((sweep / "0" / "results.json").read_text())[0]
    assert f"{x2['psnr_vol']:.2f} ± {x2['psnr_vol_std']:.2f}" in md
    assert md.index("bicubic") < md.index("SRResNet, L1")
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6


def test_collector_rejects_a_folder_without_finished_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "FAILED").write_text("boom")
    assert tables.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mrsr.report: {tmp_path}: no finished runs (no results.json below it)"
    assert tables.main([str(tmp_path / "missing")]) == 2


def test_report_orders_presets_and_keeps_one_bicubic_row(tmp_path: Path) -> None:
    def job(name: str, preset: str, scale: int, psnr: float) -> None:
        folder = tmp_path / name / "sr"
        # rows are labelled by the run's own config; no budget in them: "—"
        labels = run_labels(preset, seed=None, updates=None)
        base = {"dataset": "demo", "scale": scale, "degradation": "bicubic", **labels}
        vals = {
            "psnr": psnr,
            "ssim": 0.9,
            "nmse": 0.01,
            "psnr_vol": psnr - 1,
            "ssim_vol": 0.8,
            "nmse_vol": 0.02,
            "psnr_vol_std": 0.5,
            "ssim_vol_std": 0.01,
            "nmse_vol_std": 0.001,
        }
        folder.mkdir(parents=True)
        rows = [
            {"method": "sr", **base, **vals},
            {"method": "bicubic", **base, **vals, "psnr_vol": 20.0},
        ]
        (folder / "results.json").write_text(json.dumps(rows))

    job("0", "tex_str", 2, 30.0)
    job("1", "paper", 2, 31.0)
    job("2", "l1", 4, 28.0)
    rows = tables.table_rows(tables.collect(tmp_path))
    assert [(r["method"], r["scale"]) for r in rows] == [
        ("bicubic", 2),
        ("bicubic", 4),
        ("l1", 4),
        ("paper", 2),
        ("tex_str", 2),
    ]
    assert next(r for r in rows if r["method"] == "paper")["psnr"] == 30.0  # the volume mean
    md = tables.to_markdown(rows)
    assert (
        "| ablation: L_tex + L_str | — | 1 | 29.00 ± 0.50 | 0.8000 ± 0.0100 | 0.0200 ± 0.0010 "
        "| — | — | — |" in md
    )


def test_needed_extractors_follow_the_loss_preset(make_cfg) -> None:
    assert needed_extractors(make_cfg("loss=l1").loss) == []
    assert needed_extractors(make_cfg("loss=paper").loss) == ["vit", "disent"]
    assert needed_extractors(make_cfg("loss=vit").loss) == ["vit"]
    assert needed_extractors(make_cfg("loss=tex_str").loss) == ["disent"]
    # Both extractors train on HR slices only: one of each serves both scales and degradations,
    # but another contrast selection or network size is another extractor.
    for stage in ("vit", "disent"):
        assert extractor_key(make_cfg("scale=2"), stage) == extractor_key(
            make_cfg("scale=4"), stage
        )
        assert extractor_key(make_cfg("scale=2"), stage) == extractor_key(
            make_cfg("data.degradation=kspace"), stage
        )
        assert extractor_key(make_cfg(), stage) != extractor_key(
            make_cfg("data.contrasts=[T1,T2]"), stage
        )
    assert extractor_key(make_cfg(), "disent") != extractor_key(
        make_cfg("disent.texture_dim=16"), "disent"
    )


def test_interrupted_pipeline_resumes_without_retraining_vit(make_cfg, caplog) -> None:
    """First run: vit finishes, then sr fails (no length). Rerun: vit is skipped, sr trains."""
    tiny = [
        "stage=pipeline",
        "loss=vit",
        *TINY_DATA,
        *FAST_SR,
        "vit.max_steps=10",
        "vit.val_check_interval=5",
        "vit.batch_size=4",
        "vit.train_crop=32",
    ]
    cfg = make_cfg(*tiny, "sr.max_steps=-1", "sr.max_epochs=-1")
    root = Path(cfg.paths.output_dir)
    with pytest.raises(Exception, match="max_steps or max_epochs"):
        pipeline(cfg)
    vit_done = json.loads((root / "vit" / "FINISHED.json").read_text())
    best = Path(vit_done["best"])
    stamp = best.stat().st_mtime_ns
    assert not (root / "sr" / "FINISHED.json").exists()
    assert not (root / "disent").exists()  # loss=vit does not use the AE

    caplog.set_level(logging.INFO, logger="mrsr")
    result = pipeline(make_cfg(*tiny, "sr.max_steps=20"))
    assert "skipping vit: finished" in caplog.text
    assert best.stat().st_mtime_ns == stamp
    sr_done = json.loads((root / "sr" / "FINISHED.json").read_text())
    assert Path(sr_done["best"]).is_file() and (root / "sr" / "results.json").is_file()
    assert result["stages"]["vit"]["best"] == str(best)
    assert json.loads((root / "PIPELINE.json").read_text())["vit"]["best"] == str(best)
    # two phases, one budget: 10 L1 updates, then 10 fine-tuning updates from the L1 generator
    steps = {
        p: torch.load(root / p / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        for p in ("sr_l1", "sr")
    }
    assert steps == {"sr_l1": 10, "sr": 10}
    assert result["stages"]["sr"]["best"] and result["stages"]["sr_l1"]["best"]
    assert "fine-tuning from" in caplog.text and "loaded" in caplog.text
    # each phase is labelled by its own arguments: the L1 phase is not a row of the tables
    rows = {p: json.loads((root / p / "results.json").read_text())[0] for p in ("sr_l1", "sr")}
    assert rows["sr_l1"]["loss"] == L1_PHASE and rows["sr"]["loss"] == "vit"
    assert rows["sr"]["loss_label"] == "ablation: L_ViT" and rows["sr"]["model"] == "srresnet_small"
    assert [r.preset for r in tables.collect(root)] == ["vit"]
    assert tables.budget(rows["sr"]) == "20 updates (10 L1 + 10 fine-tuning)"
    assert tables.budget(rows["sr_l1"]) == "10 updates (one phase)"


def test_report_gives_mean_and_std_over_seeds(tmp_path: Path) -> None:
    def job(name: str, preset: str, seed: int, psnr: float) -> None:
        folder = tmp_path / name / "sr"
        base = {
            "dataset": "demo",
            "scale": 2,
            "degradation": "bicubic",
            "loss": preset,
            "seed": seed,
        }
        folder.mkdir(parents=True)
        rows = [
            {"method": "sr", **base, "psnr_vol": psnr, "psnr_vol_std": 0.0},
            {"method": "bicubic", **base, "psnr_vol": 20.0, "psnr_vol_std": 0.0},
        ]
        (folder / "results.json").write_text(json.dumps(rows))

    for i, (seed, psnr) in enumerate([(42, 30.0), (43, 31.0), (44, 32.0)]):
        job(f"l1_{i}", "l1", seed, psnr)
    job("paper_0", "paper", 42, 25.0)
    rows = {r["method"]: r for r in tables.table_rows(tables.collect(tmp_path))}
    assert rows["l1"]["n_seeds"] == 3 and rows["l1"]["psnr"] == pytest.approx(31.0)
    assert rows["l1"]["psnr_std"] == pytest.approx(1.0)  # sample std over the seeds
    assert rows["paper"]["n_seeds"] == 1 and rows["bicubic"]["psnr"] == 20.0
    md = tables.to_markdown(list(rows.values()))
    assert "mean ± std over the seeds of each row" in md and "| 3 | 31.00 ± 1.00 |" in md


def test_report_leaves_out_the_l1_phase(tmp_path: Path) -> None:
    """Found by the loss name its rows carry, wherever its folder is."""
    phase = tmp_path / "extractors" / "anywhere"
    phase.mkdir(parents=True)
    base = {"dataset": "demo", "scale": 2, "degradation": "bicubic", "loss": L1_PHASE}
    (phase / "results.json").write_text(json.dumps([{"method": "sr", **base, "psnr_vol": 1.0}]))
    with pytest.raises(tables.ReportError, match="no finished runs"):
        tables.collect(tmp_path)
