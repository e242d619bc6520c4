"""Training benchmark per stage: slices/s, peak memory, model FLOPs and achieved FLOP/s.

Each stage module is built exactly as ``python -m mrsr.run stage=<stage>`` builds it (same
config composition, the embedded demo data, the real Lightning loop without validation);
after ``--warmup`` steps, ``--steps`` steps are timed end to end (data included). FLOPs of
one training step (forward + backward + optimiser, all optimisers of the stage) are
counted with ``torch.utils.flop_counter.FlopCounterMode``. Peak memory: CUDA
``max_memory_allocated`` on a GPU, the process's peak RSS on a CPU.

The SR stage runs L1 + a fixed adversarial weight of 1e-3 (generator + discriminator, EMA), as the
feature losses need trained stage-vit/-disent checkpoints; ``--size paper`` uses the
paper-size networks, ``--size demo`` the CPU-sized ones.

    python experiments/bench_train.py --size paper --out records/<date>-bench-train
    python experiments/bench_train.py --precision bf16-mixed --batch 64 --crop 240   # GPU
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import device_name, record_folder, write_result  # noqa: E402

from mrsr.building import build_datamodule, build_module, build_trainer  # noqa: E402
from mrsr.config import compose  # noqa: E402

SIZES = {
    "paper": {"vit": ["vit=b16"], "disent": ["disent=paper"], "sr": ["model=srresnet"]},
    "demo": {"vit": [], "disent": [], "sr": []},
}


class StepTimer(L.Callback):
    """Times steps after ``warmup``; counts the FLOPs of the step right after warm-up
    (that step is not timed)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.flops = 0
        self._t0 = 0.0
        self._step = -1  # batches seen over all epochs (batch_idx restarts each epoch)
        self._counter: FlopCounterMode | None = None

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        self._step += 1
        if self._step == self.warmup:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        elif self._step == self.warmup + 1 and trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = int(self._counter.get_total_flops())
            self._counter = None
        elif self._step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def bench_stage(stage: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides = [
        f"stage={stage}",
        "callbacks=none",
        "~logger",
        f"trainer.precision={args.precision}",
        f"trainer.accelerator={args.accelerator}",
        *SIZES[args.size][stage],
    ]
    if stage == "sr":
        overrides += ["loss=gan", "loss.terms.adv.weight=1e-3", "loss.terms.adv.relative=false"]
    if args.batch:
        overrides.append(f"data.batch_size={args.batch}")
    if args.crop:
        overrides.append(f"data.patch_size={args.crop}")
    # manual-optimisation stages with two optimisers count one step per optimiser
    n_opt = 2 if stage == "disent" else 1
    overrides += [
        f"trainer.max_steps={(args.warmup + 1 + args.steps) * n_opt}",
        "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false",
        "+trainer.enable_progress_bar=false",
    ]
    cfg = compose(overrides, output_dir=out / stage)
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg)
    timer = StepTimer(args.warmup)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=dm)
    per_step = sum(timer.times) / max(1, len(timer.times))
    batch = int(cfg.data.batch_size) * trainer.world_size
    if trainer.strategy.root_device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    row = {
        "stage": stage,
        "batch": batch,
        "hr_crop": int(cfg.data.patch_size),
        "scale": int(cfg.scale),
        "timed_steps": len(timer.times),
        "s_per_step": per_step,
        "slices_per_s": batch / per_step,
        "peak_memory_mib": peak,
        "trainable_params_m": params / 1e6,
        "gflops_per_step": timer.flops / 1e9,
        "achieved_tflops": timer.flops / per_step / 1e12,
    }
    print(
        f"{stage:7s} batch {batch:3d} crop {row['hr_crop']:3d}: "
        f"{row['slices_per_s']:8.2f} slices/s, "
        f"{per_step * 1000:8.1f} ms/step, peak {peak:7.0f} MiB, "
        f"{row['gflops_per_step']:8.1f} GFLOP/step, "
        f"{row['achieved_tflops']:.4f} TFLOP/s"
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stages", nargs="+", default=["vit", "disent", "sr"])
    p.add_argument("--size", choices=list(SIZES), default="demo")
    p.add_argument("--precision", default=None, help="32-true | bf16-mixed (default: bf16 on GPU)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument(
        "--batch", type=int, default=None, help="per-process batch (default: the stage's)"
    )
    p.add_argument("--crop", type=int, default=None, help="HR training crop (default: the stage's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--out",
        type=Path,
        default=record_folder("bench-train"),
        help="record folder (or a .json file)",
    )
    args = p.parse_args()
    gpu = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    args.precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            rows.append(bench_stage(stage, args, Path(tmp)))
    device = torch.device("cuda" if gpu else "cpu")
    result = {
        "benchmark": "train",
        "device": device_name(device),
        "precision": args.precision,
        "size": args.size,
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"device: {result['device']}, precision {args.precision}")
    write_result(args.out, result, vars(args))


if __name__ == "__main__":
    main()
