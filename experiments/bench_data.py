"""Data-loading benchmark: LR/HR slice pairs per second for each data module.

Writes small synthetic IXI (240x240x96 after the default crop, so 240x240 axial slices)
and fastMRI (320x320 reconstructions) folders into a temporary directory, builds the
data modules, warms up (volumes read, normalised and degraded once, then cached) and
times training batches (random 96-pixel patches and whole-slice patches) and evaluation
batches with ``num_workers`` 0 and 2.

    python experiments/bench_data.py --out records/<date>-bench-data
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import load_avg, record_folder, write_result

from mrsr.data.datamodule import DemoDataModule, FastMRIDataModule, IXIDataModule, MRDataModule
from mrsr.data.phantoms import head_phantom


def phantom(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """An ellipsoid head phantom with a few inner structures and noise, scaled to ~1000."""
    return head_phantom(shape, seed, structures=4, spread=0.4, varied=False, float32=True)


def write_ixi(root: Path, n_subjects: int, shape: tuple[int, int, int]) -> Path:
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_subjects):
        img = nib.Nifti1Image(
            phantom(shape, seed=i).astype(np.int16), np.diag([1.0, 1.0, 1.2, 1.0])
        )
        nib.save(img, str(root / f"IXI{i + 2:03d}-Guys-{800 + i:04d}-T1.nii.gz"))
    return root


def write_fastmri(root: Path, n_files: int, n_slices: int, size: tuple[int, int]) -> Path:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        with h5py.File(root / f"file{1000 + i}.h5", "w") as f:
            f.create_dataset(
                "reconstruction_rss",
                data=(phantom((n_slices, *size), seed=i) / 1e7).astype(np.float32),
            )
            f.attrs["acquisition"] = "CORPD_FBK" if i % 2 == 0 else "CORPDFS_FBK"
    return root


def time_loader(loader, min_seconds: float, max_batches: int) -> tuple[float, int]:
    """Pairs per second over whole passes of ``loader`` (after one warm-up batch)."""
    it = iter(loader)
    next(it)  # start workers, first batch
    n, start = 0, time.perf_counter()
    batches = 0
    while True:
        for lr, _hr, _ in it:
            n += lr.shape[0]
            batches += 1
            if batches >= max_batches:
                break
        if batches >= max_batches or time.perf_counter() - start >= min_seconds:
            break
        it = iter(loader)
    return n / (time.perf_counter() - start), n


def bench_module(name: str, make, slice_size: int, args) -> list[dict]:
    rows = []
    for workers in args.workers:
        for mode, patch in (
            ("train_patch96", 96),
            (f"train_full{slice_size}", slice_size),
            ("eval", None),
        ):
            dm: MRDataModule = make(patch or 96, workers)
            t0 = time.perf_counter()
            dm.setup()
            setup_s = time.perf_counter() - t0
            loader = dm.train_dataloader() if patch else dm.val_dataloader()
            pairs_s, n = time_loader(loader, args.seconds, args.max_batches)
            hr_shape = tuple(next(iter(loader))[1].shape[-2:])
            row = {
                "module": name,
                "mode": mode,
                "num_workers": workers,
                "batch_size": loader.batch_size,
                "hr_size": list(hr_shape),
                "pairs_per_s": round(pairs_s, 1),
                "pairs_timed": n,
                "setup_s": round(setup_s, 2),
            }
            rows.append(row)
            print(
                f"{name:8s} {mode:16s} workers={workers} hr={hr_shape} "
                f"batch={loader.batch_size:3d} "
                f"{pairs_s:10.0f} pairs/s  (setup {setup_s:.1f} s)",
                flush=True,
            )
            del loader, dm
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=str(record_folder("bench-data")), help="record folder (or a .json file)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per case")
    parser.add_argument("--max-batches", type=int, default=400)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--modules", nargs="+", default=["demo", "ixi", "fastmri"])
    args = parser.parse_args()
    torch.manual_seed(0)
    common = {
        "scale": args.scale,
        "batch_size": args.batch_size,
        "eval_batch_size": args.batch_size,
    }

    rows: list[dict] = []
    load_before = load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if "demo" in args.modules:
            rows += bench_module(
                "demo",
                lambda p, w: DemoDataModule(patch_size=p, num_workers=w, **common),
                160,
                args,
            )
        if "ixi" in args.modules:
            root = write_ixi(tmp_path / "IXI", 4, (256, 256, 100))
            rows += bench_module(
                "IXI",
                lambda p, w: IXIDataModule(
                    root=str(root), split=(2, 1, 1), patch_size=p, num_workers=w, **common
                ),
                240,
                args,
            )
        if "fastmri" in args.modules:
            root = write_fastmri(tmp_path / "fastmri", 4, 24, (320, 320))
            rows += bench_module(
                "fastMRI",
                lambda p, w: FastMRIDataModule(
                    root=str(root), split=(2, 1, 1), patch_size=p, num_workers=w, **common
                ),
                320,
                args,
            )
    result = {
        "scale": args.scale,
        "degradation": "bicubic",
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before_after": [load_before, load_avg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }
    write_result(args.out, result, vars(args))


if __name__ == "__main__":
    main()
