"""Predict speed on a CPU: wall time of `stage=predict`, its network time and FLOP/s against peak.

For each input NIfTI (default: the demo seg3d T1; ``--crop`` takes a central crop first, e.g.
``180,216,181`` for the 1 mm brain of issue 33), each thread count (``--threads``, default 1
and 2), background cropping off and on (``predict.crop_background``) and, on a CPU that
computes bfloat16 natively, cropping with the network in bfloat16 (``predict.cpu_bf16``): the
wall time of the whole command (``python -m mrsr.run stage=predict ...`` in a subprocess with
``OMP_NUM_THREADS``; start-up, imports, model load, reading, normalisation, the network,
writing), the SR time predict logs (the slice loop: foreground boxes, network, interpolation),
the share of the slices' LR pixels the network ran on (its log), and the achieved FLOP/s: the
network's FLOPs per LR pixel (``torch.utils.flop_counter``, bundled model of ``--scale``) times
the pixels it ran on, over the SR time, against the CPU's peak measured with a 2048x2048 fp32
matmul at the same thread count. Each figure is the minimum of ``--repeats`` runs; the load
average before and after is recorded (a shared machine inflates every time). With a GPU, one
more row runs predict on it. ``--baseline COMMIT`` adds rows for the code of that commit (a
temporary git worktree put first on the subprocess's ``PYTHONPATH``; its default settings).

    python experiments/bench_predict.py --input mni_t1.nii.gz --crop 180,216,181 \\
        --out records/<date>-predict-speed
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import device_name, flops_per_image, load_avg, record_folder

from mrsr.inference import cpu_has_bf16
from mrsr.report.records import write_record

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "mrsr" / "assets" / "demo" / "seg3d_T1.nii.gz"
SR_SECONDS = re.compile(r"slice\(s\) on .*? in ([0-9.]+) s")
NETWORK_SHARE = re.compile(r"network ran on ([0-9.]+)% of the slices' pixels")


def peak_gflops(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """The best fp32 matmul rate at ``threads`` threads (GFLOP/s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def flops_per_pixel(scale: int) -> float:
    """The bundled network's FLOPs per LR pixel (convolutions; a 64x64 input)."""
    from mrsr.generators import bundled_model, load_generator

    return flops_per_image(load_generator(bundled_model(scale)), torch.rand(1, 1, 64, 64)) / 64**2


def cropped(path: Path, crop: list[int] | None, folder: Path) -> tuple[Path, tuple[int, ...]]:
    """``path``, or its central ``crop`` written into ``folder``; and the shape used."""
    import nibabel as nib

    img = nib.load(str(path))
    if not crop:
        return path, tuple(img.shape)
    data = np.asanyarray(img.dataobj)
    start = [max((s - c) // 2, 0) for s, c in zip(data.shape, crop, strict=True)]
    box = tuple(slice(a, a + c) for a, c in zip(start, crop, strict=True))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array(start, float) + img.affine[:3, 3]
    out = folder / f"crop_{path.name.split('.')[0]}.nii.gz"
    nib.save(nib.Nifti1Image(data[box], affine, img.header), str(out))
    return out, tuple(data[box].shape)


def run_predict(
    path: Path,
    folder: Path,
    threads: int | None,
    overrides: list[str] | None,
    scale: int,
    code: Path | None = None,
) -> dict[str, float]:
    """One ``stage=predict`` in a subprocess: wall, SR seconds and the network's pixel share.
    ``overrides=None``: the code's default settings; ``code``: a checkout of the package."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")])
    if threads is not None:  # a CPU run
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        "-m",
        "mrsr.run",
        "stage=predict",
        f"input={path.resolve()}",
        f"output={folder / 'sr.nii.gz'}",
        f"scale={scale}",
        "overwrite=true",
    ] + (overrides or [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    if code is not None and not _origin(env, folder).startswith(str(code)):
        raise RuntimeError(f"the baseline's package was not the one imported from {code}")
    if done.returncode != 0:
        raise RuntimeError(f"predict failed:\n{log[-3000:]}")
    seconds = SR_SECONDS.search(log)
    share = NETWORK_SHARE.search(log)
    return {
        "wall_s": wall,
        "sr_s": float(seconds.group(1)) if seconds else float("nan"),
        "network_share": float(share.group(1)) / 100 if share else 1.0,
    }


def _origin(env: dict[str, str], folder: Path) -> str:
    """Where ``mrsr`` is imported from in a subprocess with ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", "import mrsr; print(mrsr.__file__)"],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
    )
    return done.stdout


def worktree(commit: str, folder: Path) -> Path:
    """A detached worktree of ``commit`` in ``folder`` (removed by :func:`drop_worktree`)."""
    where = folder / f"baseline-{commit[:10]}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return where


def drop_worktree(where: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True
    )


def import_seconds(repeats: int) -> float:
    """The fastest ``import`` of what predict loads (Python start-up included)."""
    code = "import mrsr.run, mrsr.tasks.predict, mrsr.generators, mrsr.inference"
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - t0)
    return best


def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    load_before = load_avg()
    fpp = flops_per_pixel(args.scale)
    peaks = {t: peak_gflops(t) for t in args.threads}
    for t, p in peaks.items():
        print(f"peak (fp32 matmul 2048): {p:.0f} GFLOP/s with {t} thread(s)")
    imports = import_seconds(args.repeats)
    print(f"python start-up and predict's imports: {imports:.2f} s")
    gpu = torch.cuda.is_available()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = worktree(args.baseline, folder) if args.baseline else None
        for given in args.input:
            path, shape = cropped(Path(given), args.crop, folder)
            for threads in [*args.threads, *([None] if gpu else [])]:
                variants: list[tuple[str, bool | None, bool, Path | None]] = [
                    ("off", False, False, None),
                    ("on", True, False, None),
                ]
                if threads is not None and cpu_has_bf16():  # bfloat16 where it is native
                    variants.append(("on, bf16", True, True, None))
                if base is not None:
                    variants.insert(0, (f"baseline {args.baseline}", None, False, base))
                for label, crop, bf16, code in variants:
                    overrides = (
                        None
                        if crop is None
                        else [
                            f"predict.crop_background={str(crop).lower()}",
                            f"predict.cpu_bf16={str(bf16).lower()}",
                        ]
                    )
                    runs = [
                        run_predict(path, folder, threads, overrides, args.scale, code)
                        for _ in range(args.repeats)
                    ]
                    best = {k: min(r[k] for r in runs) for k in ("wall_s", "sr_s")}
                    share = runs[0]["network_share"]
                    slices = shape[2] if len(shape) == 3 else 1  # isotropic: axis 2 (auto)
                    pixels = share * np.prod(shape[:2]) * slices
                    gflops = pixels * fpp / best["sr_s"] / 1e9
                    row = {
                        "input": Path(given).name,
                        "shape": list(shape),
                        "slices": int(slices),
                        "device": "gpu" if threads is None else "cpu",
                        "threads": threads,
                        "code": "baseline" if code is not None else "this",
                        "baseline_commit": args.baseline if code is not None else None,
                        "crop_background": crop,
                        "cpu_bf16": bf16,
                        "wall_s": round(best["wall_s"], 2),
                        "sr_s": round(best["sr_s"], 2),
                        "other_s": round(best["wall_s"] - best["sr_s"], 2),
                        "network_share": round(share, 3),
                        "gflops": round(gflops, 1),
                        "peak_gflops": None if threads is None else round(peaks[threads], 1),
                        # against the float32 peak: not stated for bfloat16
                        "of_peak": None
                        if threads is None or bf16
                        else round(gflops / peaks[threads], 3),
                        "wall_runs_s": [round(r["wall_s"], 2) for r in runs],
                    }
                    rows.append(row)
                    where = "GPU" if threads is None else f"{threads} thread(s)"
                    peak = (
                        "" if row["of_peak"] is None else f" ({100 * row['of_peak']:.0f}% of peak)"
                    )
                    print(
                        f"{row['input']} {tuple(shape)} {where}, {label}: wall "
                        f"{row['wall_s']:.2f} s, SR {row['sr_s']:.2f} s, "
                        f"network on {100 * share:.0f}% of the pixels, "
                        f"{gflops:.0f} GFLOP/s{peak}",
                        flush=True,
                    )
        if base is not None:
            drop_worktree(base)
    for t in args.threads:  # the peak again: the best of before and after
        peaks[t] = max(peaks[t], peak_gflops(t))
    for row in rows:
        if row["threads"] is not None:
            row["peak_gflops"] = round(peaks[row["threads"]], 1)
            if not row["cpu_bf16"]:
                row["of_peak"] = round(row["gflops"] / peaks[row["threads"]], 3)
    result = {
        "benchmark": "predict",
        "device": device_name(torch.device("cpu")),
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "torch": torch.__version__,
        "scale": args.scale,
        "gflop_per_lr_pixel": fpp / 1e9,
        "peak_gflops": {str(t): round(p, 1) for t, p in peaks.items()},
        "imports_s": round(imports, 2),
        "repeats": args.repeats,
        "load_avg_1min_before_after": [load_before, load_avg()],
        "rows": rows,
    }
    table = {
        "caption": (
            f"stage=predict x{args.scale} (bundled model), minimum of {args.repeats} runs; wall: "
            "the whole command; SR: the slice loop; network: share of the LR pixels it ran on"
        ),
        "columns": [
            "input",
            "threads",
            "cropping",
            "wall (s)",
            "SR (s)",
            "network on",
            "GFLOP/s",
            "of peak",
        ],
        "rows": [
            [
                f"{r['input']} {'x'.join(map(str, r['shape']))}",
                "GPU" if r["threads"] is None else r["threads"],
                (
                    f"baseline {r['baseline_commit']}"
                    if r["code"] == "baseline"
                    else ("on" if r["crop_background"] else "off")
                    + (", bf16" if r.get("cpu_bf16") else "")
                ),
                f"{r['wall_s']:.1f}",
                f"{r['sr_s']:.1f}",
                f"{100 * r['network_share']:.0f}%",
                f"{r['gflops']:.0f}",
                "" if r["of_peak"] is None else f"{100 * r['of_peak']:.0f}%",
            ]
            for r in rows
        ],
    }
    return result, table


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", nargs="+", default=[str(DEMO.relative_to(ROOT))])
    p.add_argument(
        "--crop",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="e.g. 180,216,181",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", default=None, help="a commit to compare with (its defaults)")
    p.add_argument("--out", type=Path, default=record_folder("predict-speed"))
    args = p.parse_args()
    result, table = bench(args)
    doc = (__doc__ or "").strip()
    if args.out.suffix == ".json":
        import json

        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = write_record(
        args.out,
        title=doc.splitlines()[0],
        protocol=doc,
        metrics=result,
        config=config,
        device=result["device"],
        table=table,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
