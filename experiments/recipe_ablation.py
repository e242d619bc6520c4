"""Leave-one-out ablation of the quick-start training recipe, at one equal budget.

Each variant is the real command ``python -m mrsr.run stage=sr scale=S sr.max_steps=N
<overrides>`` (the demo experiment with one choice of the recipe changed), then scored on the
held-out demo subject (the stage's own test split, normalised protocol) and on every extra
``--volumes`` file by ``experiments/eval_unseen.py``'s protocol (whole volume, the file's
own units, peak = HR maximum). Same seed, data and generator updates for every row.

    python experiments/recipe_ablation.py --scale 2 --steps 200 --jobs 2 \
        --volumes path/to/another_T1.nii.gz

Writes the record ``records/<date>-recipe-ablation-x<S>/`` (``record.json``, ``table.md``); the
runs go to ``outputs/recipe_ablation_x<S>/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _bench import record_folder, write_result

from mrsr.stage_process import run_stage

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "recipe (all of the below)": [],
    "+ slices along all three axes": ["data.train_axes=[0,1,2]"],
    "no intensity-scaling augmentation": ["data.augment.intensity=null"],
    "constant learning rate, no warm-up": ["sr.lr_schedule=constant", "sr.warmup_steps=0"],
    "48-pixel patches": ["sr.train_crop=48"],
    "SRResNet up-sampler (conv + shuffle per x2, 9x9 conv at HR)": ["model.upsampler=pixelshuffle"],
    "previous quick start (6x32 BN, 48 px, constant lr, axial, flips only)": [
        "model.n_blocks=6",
        "model.batch_norm=true",
        "model.upsampler=pixelshuffle",
        "sr.train_crop=48",
        "sr.lr_schedule=constant",
        "sr.warmup_steps=0",
        "data.train_axes=null",
        "data.augment.transpose=false",
        "data.augment.intensity=null",
        "sr.channels_last=false",
    ],
    "Charbonnier instead of L1": ["loss.terms.pixel.kind=charbonnier"],
    "+ gamma augmentation [0.7, 1.4]": ["data.augment.gamma=[0.7,1.4]"],
    "+ foreground-aware crops (0.3)": ["data.patch_foreground=0.3"],
    "no residual on bicubic": ["model.residual_bicubic=false"],
    "no transpose augmentation": ["data.augment.transpose=false"],
    "learning rate 1e-3": ["sr.lr=1e-3"],
}


def run_variant(name: str, overrides: list[str], args, out: Path) -> dict:
    # a finished run is reused only for the same scale, budget and overrides (not by list position)
    key = hashlib.sha1(json.dumps([args.scale, args.steps, overrides]).encode()).hexdigest()[:8]
    run_dir = out / "runs" / f"{list(VARIANTS).index(name):02d}_{key}"
    threads = {"OMP_NUM_THREADS": str(args.threads)}
    seconds = run_stage(
        [
            "stage=sr",
            f"scale={args.scale}",
            f"sr.max_steps={args.steps}",
            f"sr.val_check_interval={args.steps}",
            "logger=null",
        ],
        run_dir,
        extra=overrides,
        skip_if=run_dir / "FINISHED.json",  # a finished variant is not trained again
        env=threads,
        cwd=ROOT,
        capture_output=True,
    )
    finished = json.loads((run_dir / "FINISHED.json").read_text())
    test = finished["test"]
    row = {
        "variant": name,
        "overrides": overrides,
        "train_seconds": seconds,
        "demo_test_psnr": test["test/psnr"],
        "demo_test_bicubic": test["test/psnr_bicubic"],
        "demo_test_gain": test["test/psnr"] - test["test/psnr_bicubic"],
        "demo_test_ssim": test["test/ssim"],
    }
    if args.volumes:
        res = out / "runs" / f"{run_dir.name}_unseen.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "experiments" / "eval_unseen.py"),
                "--scale",
                str(args.scale),
                "--ckpt",
                finished["best"],
                "--out",
                str(res),
                *args.volumes,
            ],
            cwd=ROOT,
            env={**os.environ, **threads},
            check=True,
            capture_output=True,
        )
        rows = json.loads(res.read_text())["rows"]
        row["unseen"] = {r["volume"]: r["gain_db"] for r in rows}
        row["unseen_psnr"] = {r["volume"]: r["sr_psnr"] for r in rows}
    print(
        f"{name}: demo test {row['demo_test_gain']:+.2f} dB"
        + ("".join(f", {k} {v:+.2f} dB" for k, v in row.get("unseen", {}).items())),
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    ap.add_argument("--volumes", nargs="*", default=[], help="extra unseen NIfTI volumes to score")
    ap.add_argument(
        "--only", nargs="*", default=None, help="variant indices to run (results are merged)"
    )
    args = ap.parse_args()
    out = record_folder(f"recipe-ablation-x{args.scale}")
    work = ROOT / "outputs" / f"recipe_ablation_x{args.scale}"  # the runs (not committed)
    names = [n for i, n in enumerate(VARIANTS) if args.only is None or str(i) in args.only]
    with ThreadPoolExecutor(args.jobs) as pool:
        new = list(pool.map(lambda n: run_variant(n, VARIANTS[n], args, work), names))
    # rows of earlier batches (--only) at the same budget are kept
    old = (
        json.loads((out / "record.json").read_text())["metrics"]
        if (out / "record.json").is_file()
        else {}
    )
    keep = {r["variant"]: r for r in old.get("rows", [])} if old.get("steps") == args.steps else {}
    keep.update({r["variant"]: r for r in new})
    rows = [keep[n] for n in VARIANTS if n in keep]
    vols = sorted({v for r in rows for v in r.get("unseen", {})})
    head = "| variant | demo test PSNR (gain over bicubic) |" + "".join(
        f" {v} gain |" for v in vols
    )
    lines = [
        f"Recipe ablation, x{args.scale}: {args.steps} generator updates, batch 16, seed 42, "
        f"{args.threads} thread(s) per run. "
        "Demo test = the held-out seg3d T1 (normalised protocol); "
        "other columns: whole volume in its own units, peak = HR max (experiments/eval_unseen.py).",
        "",
        head,
        "|" + "---|" * (2 + len(vols)),
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['demo_test_psnr']:.2f} dB ({r['demo_test_gain']:+.2f}) |"
            + "".join(f" {r['unseen'].get(v, float('nan')):+.2f} dB |" for v in vols)
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    write_result(out, {"scale": args.scale, "steps": args.steps, "rows": rows}, vars(args))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
