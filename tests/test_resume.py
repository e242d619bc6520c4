"""Kill-and-resume: a run SIGKILLed after its first checkpoint and resumed with
``ckpt_path=last`` ends with bit-identical weights to an uninterrupted run (CPU,
``trainer.deterministic=true``). Also the NaN policy (skip vs stop) and atomic saves."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Per stage: tiny, fast settings; checkpoints (validation) every 2 steps.
STAGES = {
    "vit": ["vit.max_steps=10", "vit.val_check_interval=2", "vit.batch_size=8"],
    "disent": ["disent.max_steps=10", "disent.val_check_interval=2", "disent.batch_size=4"],
    "sr": [
        "sr.max_steps=10",
        "sr.val_check_interval=2",
        "sr.batch_size=4",
        "sr.train_crop=32",
        "loss=gan",  # L1 + a fixed adversarial weight
        "loss.terms.adv.weight=1e-3",
        "loss.terms.adv.relative=false",
        "model.n_blocks=2",
        "model.n_feats=16",
    ],
}
COMMON = ["~callbacks.progress_bar", "trainer=cpu", "trainer.deterministic=true", "seed=7"]


def cli(run_dir: Path, stage: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mrsr.run",
        f"stage={stage}",
        *STAGES[stage],
        *COMMON,
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], timeout: float = 300) -> None:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"] | {"global_step": torch.tensor(ckpt["global_step"])}


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, rng: random.Random) -> int:
    """Start the run, SIGKILL it at a random moment after last.ckpt first appears."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def check_resume(tmp_path: Path, stage: str, *extra: str) -> None:
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    run(cli(ref, stage, *extra))
    rng = random.Random()
    code = kill_after_first_checkpoint(cli(cut, stage, *extra), cut, rng)
    if code == 0:  # finished before the kill: the test would prove nothing
        pytest.skip("the run finished before it could be killed")
    killed_step = weights(cut)["global_step"].item()
    print(f"{stage}: killed at step {killed_step}")
    run(cli(cut, stage, "ckpt_path=last", *extra))
    a, b = weights(ref), weights(cut)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"killed at step {killed_step}: {len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.mark.parametrize("stage", ["sr"])
def test_kill_and_resume_fast(tmp_path: Path, stage: str) -> None:
    check_resume(tmp_path, stage)


@pytest.mark.parametrize("stage", ["vit", "disent"])
def test_kill_and_resume(tmp_path: Path, stage: str) -> None:
    check_resume(tmp_path, stage)


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch) -> None:
    """A save that dies half-way leaves the previous checkpoint intact and no partial file."""
    from mrsr.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint")
        raise KeyboardInterrupt  # e.g. a signal during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resumable_sampler_and_seeded_dataset() -> None:
    from mrsr.data.resumable import ResumableSampler, SeededDataset

    data = list(range(11))
    full = list(ResumableSampler(data, seed=5))
    assert sorted(i for i, _ in full) == data
    resumed = ResumableSampler(data, seed=5)
    resumed.start = 4
    assert list(resumed) == full[4:]  # continues mid-epoch ...
    assert list(resumed) == full  # ... once, then whole epochs again
    resumed.set_epoch(1)
    assert [i for i, _ in resumed] != [i for i, _ in full]
    ranks = [list(ResumableSampler(data, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6 and {i for r in ranks for i, _ in r} == set(data)

    class Noisy:
        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(2) + i

    ds = SeededDataset(Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b = ds[(3, 99)], ds[(3, 99)]
    assert torch.equal(a, b) and not torch.equal(a, ds[(3, 98)])
    assert torch.equal(torch.get_rng_state(), before)  # loading data leaves the global RNG alone


def test_kill_and_resume_with_lr_made_on_the_fly(tmp_path: Path) -> None:
    """The acquisition-model mix draws every training LR per sample: a resumed run draws the
    same ones."""
    check_resume(tmp_path, "sr", "degradation=mix")
