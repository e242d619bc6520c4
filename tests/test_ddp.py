"""Distributed data parallel on 2 CPU processes (gloo), through the command line.

Per stage: a 2-process run trains a few steps (DDP gradients, rank-zero writing, one run
folder for both ranks) and tests its final weights; a 1-process run restores the same
weights (``ckpt_path=<that last.ckpt>``, nothing left to train) and tests them. The test
metrics must agree to 1e-6: no volume or slice is dropped or counted twice across ranks.
Also: the launcher configs compose, and multirun + the basic DDP launcher is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each run has at most one validation, at its last step, so the DDP run's best checkpoint holds
# the final weights that the single-process run restores from last.ckpt.
STAGES = {
    "vit": ["vit.max_steps=2", "vit.val_check_interval=2", "vit.batch_size=8"],
    "disent": ["disent.max_steps=2", "disent.val_check_interval=2", "disent.batch_size=4"],
    # one optimiser step per batch updates G and D: 2 steps = 2 batches = 2 generator updates
    "sr": [
        "sr.max_steps=2",
        "sr.val_check_interval=1",
        "sr.batch_size=4",
        "sr.train_crop=32",
        "loss=gan",  # L1 + a fixed adversarial weight
        "loss.terms.adv.weight=1e-3",
        "loss.terms.adv.relative=false",
    ],
}
COMMON = ["~callbacks.progress_bar", "seed=3"]


def run(run_dir: Path, stage: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "mrsr.run",
        f"stage={stage}",
        *STAGES[stage],
        *COMMON,
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def finished_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "FINISHED.json").read_text())["test"]


@pytest.mark.parametrize("stage", ["vit", "disent", "sr"])
def test_ddp_two_processes_match_one(tmp_path: Path, stage: str) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run(ddp, stage, "trainer=ddp_cpu")
    # both ranks wrote into the one run folder; rank 1 only its log (no config, no images)
    assert (ddp / "checkpoints" / "last.ckpt").exists()
    assert (ddp / "train_ddp_process_1.log").exists()
    assert not any(p.name.startswith("rank") for p in tmp_path.iterdir())
    run(single, stage, "trainer=cpu", f"ckpt_path={ddp / 'checkpoints' / 'last.ckpt'}")
    two, one = finished_metrics(ddp), finished_metrics(single)
    assert two.keys() == one.keys() and "test/score" in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key


def test_multirun_with_subprocess_ddp_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrsr.run",
            "-m",
            "stage=vit",
            *STAGES["vit"],
            *COMMON,
            "trainer=ddp_cpu",
            "seed=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed = sorted((tmp_path / "sweep").glob("*/FAILED"))
    assert len(failed) == 2, proc.stderr[-2000:]
    assert "multirun (-m) with a multi-process trainer" in failed[0].read_text()
    # no rank re-ran the sweep: exactly the two job folders
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm", "submitit_local"])
def test_launcher_configs_compose(make_cfg, launcher: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = make_cfg(f"hydra/launcher={launcher}", "trainer=slurm", "trainer.devices=4")
    assert cfg.hydra.launcher._target_.endswith("Launcher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 4 == cfg.hydra.launcher.gpus_per_node
        assert cfg.hydra.launcher.nodes == cfg.trainer.num_nodes


@pytest.mark.parametrize("preset", ["ddp", "ddp_cpu", "slurm", "gpu", "cpu"])
def test_trainer_presets_compose(make_cfg, preset: str) -> None:
    from hydra.utils import instantiate

    cfg = make_cfg(f"trainer={preset}")
    if preset == "ddp_cpu":
        strategy = instantiate(cfg.trainer.strategy)
        assert strategy.process_group_backend == "gloo"
    assert cfg.trainer.precision in ("32-true", "bf16-mixed", "16-mixed")


@pytest.mark.slow
def test_torchrun_ranks_with_different_run_folders_stop(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "-m",
            "mrsr.run",
            "stage=vit",
            *STAGES["vit"],
            *COMMON,
            "trainer=ddp_cpu",
            f"hydra.run.dir={tmp_path}/rank_${{oc.env:LOCAL_RANK}}",
        ],
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "mrsr: ranks write to different run folders" in proc.stdout + proc.stderr
