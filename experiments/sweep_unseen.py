"""Score every finished SR model of a sweep on whole volumes it never saw, per method over seeds.

For each finished SR run of the sweep (a folder with ``results.json``, as ``mrsr.report`` finds
them; the L1 phase of a two-phase run is not one), the best SR checkpoint is run through
``stage=predict`` on each volume with the protocol of ``eval_unseen.py`` (LR made by
antialiased bicubic down-sampling in the volume's own units, whole volume, peak = the HR
maximum, nothing clipped) and PSNR, SSIM and HFEN are averaged per method (loss preset, or
comparison network) over the seeds (mean ± sample std). The method, seed and budget of every
row come from the run's own results rows.

    python experiments/sweep_unseen.py SWEEP_DIR VOLUME.nii.gz ... --out results.json \\
        [--md table.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from _bench import write_result

from mrsr.protocols.unseen import evaluate_unseen
from mrsr.report import tables
from mrsr.report.tables import budget, method_label, method_name, method_order


def jobs(sweep: Path) -> list[dict]:
    """Finished SR runs below ``sweep`` (the L1 phases of two-phase runs left out): checkpoint,
    method, seed, scale and budget, as their own results rows say (``mrsr.report``'s naming)."""
    out = []
    for run in tables.collect(sweep):
        finished = run.folder / "FINISHED.json"
        if not finished.is_file():
            continue
        row = run.rows[0]
        out.append(
            {
                "ckpt": json.loads(finished.read_text())["best"],
                "preset": run.preset,
                "method": method_name(run.model, run.preset),
                "label": method_label(run.model, run.preset, row),
                "seed": run.seed,
                "scale": int(row["scale"]),
                "budget": budget(row),
                "job": str(run.folder),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("volumes", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    done: set[tuple[str, str]] = set()
    if Path(args.out).is_file():  # scored already (same checkpoint and volume): kept, not rerun
        rows = json.loads(Path(args.out).read_text()).get("rows", [])
        done = {(r["ckpt"], r["volume"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for j in jobs(Path(args.sweep)):
            for vol in args.volumes:
                if (j["ckpt"], Path(vol).name) in done:
                    continue
                r = evaluate_unseen(vol, j["scale"], j["ckpt"], 2, 1.0, Path(tmp))
                rows.append({**j, **r})
                print(
                    f"{j['method']:<14} seed {j['seed']} {r['volume']:<40} "
                    f"SR {r['sr_psnr']:.2f} dB "
                    f"({r['gain_db']:+.2f}), SSIM {r['sr_ssim']:.4f}, HFEN {r['sr_hfen']:.4f}",
                    flush=True,
                )
    summary = []
    keys = sorted(
        {(r["volume"], r["scale"], r["method"]) for r in rows},
        key=lambda k: (k[0], k[1], method_order(k[2])),
    )
    for vol, scale, method in keys:
        sel = [r for r in rows if (r["volume"], r["scale"], r["method"]) == (vol, scale, method)]
        rec = {
            "volume": vol,
            "scale": scale,
            "method": method,
            "label": sel[0].get("label") or method,
            "n_seeds": len(sel),
            "budget": sel[0]["budget"],
        }
        for m in ("psnr", "ssim", "hfen", "gain_db"):
            vals = [r[f"sr_{m}"] if m != "gain_db" else r[m] for r in sel]
            rec[m], rec[f"{m}_std"] = (
                statistics.mean(vals),
                (statistics.stdev(vals) if len(vals) > 1 else 0.0),
            )
        rec["bicubic_psnr"], rec["bicubic_ssim"], rec["bicubic_hfen"] = (
            sel[0][k] for k in ("bicubic_psnr", "bicubic_ssim", "bicubic_hfen")
        )
        summary.append(rec)
    write_result(args.out, {"sweep": str(args.sweep), "rows": rows, "summary": summary})
    lines = []
    for vol, scale in dict.fromkeys((r["volume"], r["scale"]) for r in summary):
        lines += [
            f"**{vol}**, x{scale} (whole volume, own units, peak = HR max; mean ± std over seeds)",
            "",
            "| method | budget | seeds | PSNR | SSIM | HFEN | gain vs bicubic (dB) |",
            "|---|---|---|---|---|---|---|",
        ]
        sel = [r for r in summary if (r["volume"], r["scale"]) == (vol, scale)]
        first = sel[0]
        lines.append(
            f"| bicubic | — | — | {first['bicubic_psnr']:.2f} | {first['bicubic_ssim']:.4f} | "
            f"{first['bicubic_hfen']:.4f} | — |"
        )
        for r in sel:
            lines.append(
                f"| {r['label']} | {r['budget']} | {r['n_seeds']} | "
                f"{r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.4f} ± {r['ssim_std']:.4f} | "
                f"{r['hfen']:.4f} ± {r['hfen_std']:.4f} | "
                f"{r['gain_db']:+.2f} ± {r['gain_db_std']:.2f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
