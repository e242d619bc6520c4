"""Score every finished SR model of a sweep on whole volumes it never saw, per method over seeds.

For each job of the sweep (a ``stage=pipeline`` or ``stage=sr`` job folder with ``.hydra/``), the
best SR checkpoint is run through ``stage=predict`` on each volume with the protocol of
``eval_unseen.py`` (LR made by antialiased bicubic down-sampling in the volume's own units,
whole volume, peak = the HR maximum, nothing clipped) and PSNR, SSIM and HFEN are averaged per
method (loss preset, or comparison network) over the seeds (mean ± sample std). The budget of every row comes from its config.

    python experiments/sweep_unseen.py SWEEP_DIR VOLUME.nii.gz ... --out results.json [--md table.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import yaml
from _bench import write_result
from eval_unseen import evaluate

from mrsr.report import budget, method_label, method_name, method_order


def _choices(job: Path) -> dict | None:
    """The job's Hydra config-group choices (None when its folder is gone)."""
    try:
        return yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def _method(choices: dict) -> str:
    """The row a job belongs to, named as ``mrsr.report`` names it."""
    return method_name(choices.get("model"), choices.get("loss") or "?")


def jobs(sweep: Path) -> list[dict]:
    """Finished SR runs below ``sweep``: checkpoint, method, seed, scale and budget."""
    out = []
    for finished in sorted(sweep.rglob("sr/FINISHED.json")) + sorted(sweep.glob("*/FINISHED.json")):
        job = finished.parent.parent if finished.parent.name == "sr" else finished.parent
        if not (job / ".hydra").is_dir():
            continue
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        choices = _choices(job) or {}
        record = json.loads(finished.read_text())
        out.append({"ckpt": record["best"], "preset": choices.get("loss"), "method": _method(choices), "seed": cfg.get("seed"),
                    "scale": int(cfg["scale"]), "budget": budget(cfg), "job": str(job)})
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
                r = evaluate(vol, j["scale"], j["ckpt"], 2, 1.0, Path(tmp))
                rows.append({**j, **r})
                print(f"{j['method']:<14} seed {j['seed']} {r['volume']:<40} SR {r['sr_psnr']:.2f} dB "
                      f"({r['gain_db']:+.2f}), SSIM {r['sr_ssim']:.4f}, HFEN {r['sr_hfen']:.4f}", flush=True)
    summary = []
    for r in rows:  # rows scored before methods were named: from their job's choices
        if "method" not in r:
            choices = _choices(Path(r["job"]))
            r["method"] = _method(choices) if choices else r.get("preset") or "?"
    keys = sorted({(r["volume"], r["scale"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], method_order(k[2])))
    for vol, scale, method in keys:
        sel = [r for r in rows if (r["volume"], r["scale"], r["method"]) == (vol, scale, method)]
        rec = {"volume": vol, "scale": scale, "method": method, "n_seeds": len(sel), "budget": sel[0]["budget"]}
        for m in ("psnr", "ssim", "hfen", "gain_db"):
            vals = [r[f"sr_{m}"] if m != "gain_db" else r[m] for r in sel]
            rec[m], rec[f"{m}_std"] = statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rec["bicubic_psnr"], rec["bicubic_ssim"], rec["bicubic_hfen"] = (sel[0][k] for k in ("bicubic_psnr", "bicubic_ssim", "bicubic_hfen"))
        summary.append(rec)
    write_result(args.out, {"sweep": str(args.sweep), "rows": rows, "summary": summary})
    lines = []
    for vol, scale in dict.fromkeys((r["volume"], r["scale"]) for r in summary):
        lines += [f"**{vol}**, x{scale} (whole volume, own units, peak = HR max; mean ± std over seeds)", "",
                  "| method | budget | seeds | PSNR | SSIM | HFEN | gain vs bicubic (dB) |", "|---|---|---|---|---|---|---|"]
        sel = [r for r in summary if (r["volume"], r["scale"]) == (vol, scale)]
        first = sel[0]
        lines.append(f"| bicubic | — | — | {first['bicubic_psnr']:.2f} | {first['bicubic_ssim']:.4f} | "
                     f"{first['bicubic_hfen']:.4f} | — |")
        for r in sel:
            lines.append(f"| {method_label(r['method'])} | {r['budget']} | {r['n_seeds']} | "
                         f"{r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.4f} ± {r['ssim_std']:.4f} | "
                         f"{r['hfen']:.4f} ± {r['hfen_std']:.4f} | {r['gain_db']:+.2f} ± {r['gain_db_std']:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
