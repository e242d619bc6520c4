"""Through-plane SR speed: wall time of `stage=throughplane`, its split and its gain, per setting.

For each case (a 1 mm volume, the axis made thick, an optional centred crop or zero-pad, and the
profile the thick slices are made with: Gaussian or boxcar, by the plain operator of
``throughplane_eval.py``, not the stage's own) and each setting (a list of overrides; the first
is the one the others are compared with), ``mrsr.protocols.throughplane.evaluate_simulated`` (as
``throughplane_eval.py`` runs it) runs the stage in a subprocess, as users run it, and scores it
over the whole volume against the 1 mm truth. The time is split into the slice-profile
estimate, training (the self-supervised pairs, the network's steps and its held-out score),
applying (cubic spline, the network across the thick axis, the self-check, writing) and the rest
(start-up, imports, reading: the wall time less the three). The gain is SR's PSNR minus the
cubic spline's. One seed; the load average before and after is recorded (a shared machine
inflates every time).

    python experiments/bench_throughplane.py --setting before throughplane.precision=32-true \\
        --setting now --out records/<date>-throughplane-speed

Cases default to the MNI template cropped to 180 x 216 x 180 (45 slices of 4 mm: the issue's
180 x 216 x 45 scan) and the demo stroke T1 (axis 2), each with Gaussian and boxcar slices.
``--include FILE:SETTING`` adds the rows of an earlier ``throughplane_eval.py`` result (its
``record.json``) under that setting's name instead of running them again.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from _bench import device_name, load_avg, write_result

from mrsr.errors import ConfigError
from mrsr.protocols.throughplane import evaluate_simulated
from mrsr.report.records import RECORD, write_record

DEFAULT_SEED = 42  # conf/config.yaml
DEFAULT_CASES = [
    "mni_t1.nii.gz:2@180,216,180",
    "mrsr/assets/demo/stroke_T1.nii.gz:2",
]


def parse_case(spec: str) -> tuple[str, list[int] | None]:
    """``path[:axis][@n0,n1,n2]``: the volume and its centred crop / zero-pad."""
    path, _, shape = spec.partition("@")
    return path, [int(n) for n in shape.split(",")] if shape else None


def split(row: dict) -> dict:
    """The time split of one ``throughplane_eval`` row (seconds; a row without the estimate's
    time, from before the stage recorded it, counts it in training and says null)."""
    recorded = row.get("seconds_estimate")
    estimate = float(recorded or 0.0)
    training = float(row["seconds_train"]) - estimate
    applying = float(row["seconds_apply"])
    total = float(row["seconds_total"])
    return {
        "wall_s": round(total, 1),
        "estimate_s": None if recorded is None else round(estimate, 1),
        "training_s": round(training, 1),
        "applying_s": round(applying, 1),
        "other_s": round(total - estimate - training - applying, 1),
    }


def seed_of(overrides: list[str]) -> int:
    """The run's seed: the last ``seed=`` override, else the config's default (42)."""
    seeds = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")]
    return seeds[-1] if seeds else DEFAULT_SEED


def summarise(row: dict, setting: str, overrides: list[str], case: str, threads: str) -> dict:
    return {
        "setting": setting,
        "overrides": overrides,
        "omp_threads": threads,
        "seed": seed_of(overrides),
        "case": case,
        "volume": row["volume"],
        "shape_thick": row["shape_thick"],
        "simulated_with": row["simulated_with"],
        "profile": row.get("profile"),
        **split(row),
        "gain_db": round(float(row["gain_db"]), 3),
        "sr_psnr": round(float(row["sr_psnr"]), 3),
        "cubic_psnr": round(float(row["cubic_psnr"]), 3),
        "held_out_gain_db": round(float(row["held_out_gain_db"]), 3),
        "bandlimited_gain_db": None
        if row.get("bandlimited_gain_db") is None
        else round(float(row["bandlimited_gain_db"]), 3),
        "steps": row.get("steps"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="path[:axis][@n0,n1,n2]")
    ap.add_argument("--profiles", nargs="*", default=["gaussian", "boxcar"])
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument(
        "--setting",
        nargs="+",
        action="append",
        metavar=("NAME", "OVERRIDE"),
        help="a setting's name and its overrides (repeatable; the first is the reference)",
    )
    ap.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="FILE:SETTING",
        help="rows of an earlier throughplane_eval.py record.json, under that setting",
    )
    ap.add_argument(
        "--reference", default=None, help="the setting compared with (default: the first)"
    )
    ap.add_argument(
        "--ran",
        action="append",
        default=[],
        metavar="COMMAND",
        help="the command that made included rows (kept in the record)",
    )
    ap.add_argument("--title", default=None, help="the record's title (default: this script's)")
    ap.add_argument("--note", default=None, help="a note the record's page shows")
    ap.add_argument("--out", default=None, help="record folder (or a .json file)")
    args = ap.parse_args()
    settings = [(s[0], s[1:]) for s in (args.setting or [["default"]])]
    rows: list[dict] = []
    for spec in args.include:
        path, _, name = spec.rpartition(":")
        result = json.loads(Path(path).read_text())
        metrics = result.get("metrics", result)
        for row in metrics["rows"]:
            label = Path(path).parent.name if Path(path).name == "record.json" else Path(path).stem
            if "setting" in row:  # a row of this script's own output: as it is
                rows.append({**row, "from": row.get("from", label)})
                continue
            case = f"{row['volume']} {row['shape_thick']} {row['simulated_with']}"
            threads = str(metrics.get("omp_threads", "all"))
            summary = summarise(row, name, metrics.get("overrides", []), case, threads)
            rows.append({**summary, "from": label})
    load_before = load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        for case_spec in args.cases if args.setting or not args.include else []:
            volume, pad = parse_case(case_spec)
            for profile in args.profiles:
                for name, overrides in settings:
                    work = Path(tmp) / f"run{len(rows)}"  # its own folder: outputs are not replaced
                    work.mkdir()
                    row, _ = evaluate_simulated(
                        volume, args.spacing, pad, overrides, work, False, profile, "plain"
                    )
                    case = f"{row['volume']} {row['shape_thick']} {row['simulated_with']}"
                    threads = os.environ.get("OMP_NUM_THREADS", "all")
                    rows.append(summarise(row, name, overrides, case, threads))
                    r = rows[-1]
                    print(
                        f"{name:<10} {case:<48} wall {r['wall_s']:6.1f} s (estimate "
                        f"{r['estimate_s']:.1f}, training {r['training_s']:.1f}, applying "
                        f"{r['applying_s']:.1f}, other {r['other_s']:.1f}); gain "
                        f"{r['gain_db']:+.2f} dB (ideal low-pass {r['bandlimited_gain_db']:+.2f})",
                        flush=True,
                    )
    names = list(dict.fromkeys(r["setting"] for r in rows))
    reference = args.reference or names[0]

    # each row against the reference's row of the same case, thread count and seed
    def key(r: dict) -> tuple:
        return r["case"], r["omp_threads"], r.get("seed", DEFAULT_SEED)

    base = {key(r): r for r in rows if r["setting"] == reference}
    print(
        f"\n{'setting':<12} {'case':<60} {'threads':>7} {'wall s':>7} "
        f"{'estimate/training/applying/other s':>36} {'gain dB':>8} {'vs ' + reference:>14}"
    )
    for r in rows:
        ref = base.get(key(r))
        r["gain_vs_reference_db"] = round(r["gain_db"] - ref["gain_db"], 3) if ref else None
        diff = "" if ref is None else f"{r['gain_vs_reference_db']:+.2f}"
        split_text = "/".join(
            "-" if r[k] is None else f"{r[k]:.1f}"
            for k in ("estimate_s", "training_s", "applying_s", "other_s")
        )
        print(
            f"{r['setting']:<12} {r['case']:<60} {r['omp_threads']:>7} {r['wall_s']:7.1f} "
            f"{split_text:>36} {r['gain_db']:+8.2f} {diff:>14}"
        )
    worst = {
        n: min(
            (
                r["gain_vs_reference_db"]
                for r in rows
                if r["setting"] == n and r["gain_vs_reference_db"] is not None
            ),
            default=None,
        )
        for n in names
    }
    print("worst gain difference per setting: " + ", ".join(f"{n} {w}" for n, w in worst.items()))
    if not args.out:
        return
    result = {
        "cpu": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "reference": reference,
        "settings": {r["setting"]: r["overrides"] for r in rows},
        "commands": args.ran,
        "load_avg_1min_before_after": [load_before, load_avg()],
        "worst_gain_vs_reference_db": worst,
        "rows": rows,
    }
    out = Path(args.out)
    if out.suffix == ".json":
        write_result(out, result, vars(args))
        return
    table = {
        "caption": (
            "stage=throughplane at 4x: wall time of the whole command and its split "
            "(s), gain in PSNR over the cubic spline on the whole volume against the 1 mm truth "
            f"(thick slices made by the plain operator); vs {reference}: the gain's difference; "
            "ideal low-pass: the gain of the truth with every frequency above the thick Nyquist "
            "removed along the thick axis (a perfect deblurring that adds nothing)"
        ),
        "columns": [
            "case",
            "setting",
            "threads",
            "seed",
            "wall (s)",
            "estimate / training / applying / other (s)",
            "gain (dB)",
            f"vs {reference} (dB)",
            "ideal low-pass (dB)",
        ],
        "rows": [
            [
                r["case"],
                r["setting"],
                r["omp_threads"],
                r.get("seed", DEFAULT_SEED),
                f"{r['wall_s']:.0f}",
                " / ".join(
                    "-" if r[k] is None else f"{r[k]:.1f}"
                    for k in ("estimate_s", "training_s", "applying_s", "other_s")
                ),
                f"{r['gain_db']:+.2f}",
                "" if r["gain_vs_reference_db"] is None else f"{r['gain_vs_reference_db']:+.2f}",
                "" if r.get("bandlimited_gain_db") is None else f"{r['bandlimited_gain_db']:+.2f}",
            ]
            for r in rows
        ],
    }
    doc = (__doc__ or "").strip()
    files = [f.name for f in out.glob("*") if f.is_file() and f.name != RECORD]
    path = write_record(
        out,
        title=args.title or doc.splitlines()[0],
        protocol=doc,
        metrics=result,
        config=vars(args),
        device=result["cpu"],
        files=files,
        table=table,
        note=args.note,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:  # a setting the simulation cannot make: one line
        raise SystemExit(f"{Path(__file__).name}: {err}") from None
