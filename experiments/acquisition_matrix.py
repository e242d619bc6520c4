"""The evaluation matrix: models on unseen volumes x LR operators x scales, against bicubic and
zero-filling.

For each scale, volume and LR operator of ``mrsr.data.acquisition.MATRIX_OPERATORS`` (bicubic,
k-space truncation, k-space with a Hamming window, with partial Fourier 0.625, with complex noise
of 1.5 % and 4 % of the robust maximum; outside the training mix's ranges: noise 8 %, a band of
0.7 of the grid's, the block average), ``experiments/eval_unseen.py``'s protocol: the LR volume is
made from every slice along axis 2, super-resolved by ``stage=predict`` without and with
``predict.consistency=kspace``, and scored over the whole volume in its own units (PSNR with
peak = the HR volume's maximum, SSIM averaged over slices). Gains are over the better of the
two classical baselines for that LR (bicubic, zero-filling). ``--before`` adds the SR of other
checkpoints (e.g. the previous bundled models) as extra columns.

    python experiments/acquisition_matrix.py mrsr/assets/demo/seg3d_T1.nii.gz mni_t1.nii.gz \\
        --before x2=old_x2.ckpt x4=old_x4.ckpt --out records/<date>-acquisition-matrix

Prints one line per cell and writes a record (its headline table) or a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from _bench import device_name, write_result

from mrsr.data.acquisition import MATRIX_OPERATORS, OUTSIDE_TRAINING
from mrsr.protocols.unseen import evaluate_unseen
from mrsr.report.records import write_record

VAL_SLAB = (0.55, 0.7)  # conf/data/demo.yaml's val_slab


def cell(row: dict, key: str = "sr") -> str:
    return f"{row[f'{key}_psnr']:.2f}"


def table(rows: list[dict], before: bool) -> dict:
    dc = all("sr_kspace_psnr" in r for r in rows)
    cols = ["scale", "volume", "LR made by", "bicubic", "zero-filling", "SR"]
    cols += ["SR + k-space DC"] if dc else []
    cols += ["gain over best (dB)"] + (["DC gain (dB)"] if dc else [])
    cols += ["previous model (dB)"] if before else []
    out = []
    for r in rows:
        outside = " (outside training)" if r["degradation"] in OUTSIDE_TRAINING else ""
        line = [
            f"x{r['scale']}",
            r["volume"].removesuffix(".nii.gz"),
            r["degradation"] + outside,
            cell(r, "bicubic"),
            cell(r, "zerofill"),
            cell(r),
            *([f"{r['sr_kspace_psnr']:.2f}"] if dc else []),
            f"{r['gain_best_db']:+.2f}",
            *([f"{r['gain_best_kspace_db']:+.2f}"] if dc else []),
        ]
        if before:
            line.append(f"{r['before_gain_best_db']:+.2f}")
        out.append(line)
    caption = (
        "Bundled models on whole volumes they never saw, LR made along axis 2 by each operator "
        "named. PSNR over the volume (peak = HR max), dB. Gains are over the better classical "
        "baseline for that LR (bicubic or zero-filling): of SR, of SR with predict.consistency="
        "kspace (DC) and of the previous bundled model. One seed per model."
    )
    return {"caption": caption, "columns": cols, "rows": out}


def val_slab(folder: Path) -> list[str]:
    """The demo's validation slab of each training contrast, written as NIfTI into ``folder``
    (RAS+, axial fractions :data:`VAL_SLAB` of the volume, as the demo data module splits it)."""
    import nibabel as nib

    from mrsr.data.sources import demo_dir

    out = []
    for contrast in ("T1", "T2", "FLAIR"):
        img = nib.as_closest_canonical(nib.load(str(demo_dir() / f"stroke_{contrast}.nii.gz")))
        vol = np.asarray(img.dataobj, dtype=np.float32)
        n = vol.shape[2]
        lo, hi = int(VAL_SLAB[0] * n), int(VAL_SLAB[1] * n)
        path = folder / f"stroke_{contrast}_val.nii.gz"
        nib.save(nib.Nifti1Image(vol[:, :, lo:hi], img.affine), str(path))
        out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volumes", nargs="*", help="unseen NIfTI volumes (not with --from-json)")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--degradation", nargs="+", default=list(MATRIX_OPERATORS))
    ap.add_argument("--ckpt", nargs="*", default=[], help="scale=checkpoint (default: bundled)")
    ap.add_argument("--before", nargs="*", default=[], help="scale=checkpoint to compare with")
    ap.add_argument("--out", default=None, help="record folder or .json file")
    ap.add_argument(
        "--demo-val-slab",
        action="store_true",
        help="add the demo's validation slab (stroke T1/T2/FLAIR, axial fractions 0.55-0.7: "
        "slices the bundled models never trained on, of their training subject), for choosing "
        "between recipes without the unseen volumes",
    )
    ap.add_argument("--no-consistency", action="store_true", help="leave out the SR + DC column")
    ap.add_argument(
        "--from-json",
        default=None,
        help="write the record from this earlier run's JSON (rows of --degradation only) instead "
        "of running",
    )
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        rows = [r for r in result["rows"] if r["degradation"] in args.degradation]
        before = any("before_gain_best_db" in r for r in rows)
        save(args.out, {**result, "rows": rows}, table(rows, before))
        return
    logging.basicConfig(level=logging.ERROR)
    if not args.volumes:
        ap.error("give at least one volume (or --from-json)")
    ckpts = {int(k): v for k, v in (a.split("=", 1) for a in args.ckpt)}
    before = {int(k): v for k, v in (a.split("=", 1) for a in args.before)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        volumes = list(args.volumes) + (val_slab(Path(tmp)) if args.demo_val_slab else [])
        modes = ("none",) if args.no_consistency else ("none", "kspace")
        for scale in args.scales:
            for path in volumes:
                for kind in args.degradation:
                    r = evaluate_unseen(
                        path,
                        scale,
                        ckpts.get(scale),
                        2,
                        1.0,
                        Path(tmp),
                        kind,
                        modes,
                        with_realism=False,
                    )
                    if scale in before:
                        b = evaluate_unseen(
                            path, scale, before[scale], 2, 1.0, Path(tmp), kind, ("none",), False
                        )
                        r |= {
                            "before_sr_psnr": b["sr_psnr"],
                            "before_gain_best_db": b["gain_best_db"],
                        }
                    rows.append(r)
                    print(
                        f"x{scale} {r['volume']:<18} {kind:<18} bicubic {r['bicubic_psnr']:.2f} "
                        f"zerofill {r['zerofill_psnr']:.2f} SR {r['sr_psnr']:.2f} "
                        f"({r['gain_best_db']:+.2f})"
                        + (
                            f" SR+DC {r['sr_kspace_psnr']:.2f} ({r['gain_best_kspace_db']:+.2f})"
                            if "sr_kspace_psnr" in r
                            else ""
                        )
                        + (f" before {r['before_gain_best_db']:+.2f}" if scale in before else ""),
                        flush=True,
                    )
    gains = [r["gain_best_db"] for r in rows]
    print(
        f"mean gain over the best classical baseline {np.mean(gains):+.2f} dB ({len(rows)} cells)"
    )
    result = {"ckpt": {s: ckpts.get(s, f"bundled x{s}") for s in args.scales}, "rows": rows}
    if args.out:
        save(args.out, result, table(rows, bool(before)))


def save(out: str, result: dict, headline: dict) -> None:
    """``result`` as a JSON file (``out`` ends in .json) or a record with its headline table."""
    path = Path(out)
    if path.suffix == ".json":
        write_result(path, result)
        return
    path.mkdir(parents=True, exist_ok=True)
    files = [f.name for f in path.glob("*") if f.is_file() and f.name != "record.json"]
    write_record(
        path,
        title=__doc__.splitlines()[0],
        protocol=__doc__,
        metrics=result,
        device=device_name(torch.device("cpu")),
        files=files,
        table=headline,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
