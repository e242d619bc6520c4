"""Score named SR checkpoints on the test volume's results and on outside volumes: one row each.

    python experiments/ablation_unseen.py --out results.json --volume VOLUME.nii.gz NAME=RUN_DIR ...

``RUN_DIR`` is a stage-sr run folder (``FINISHED.json``, ``results.json``): the test-split
figures (per volume, the package protocol) come from its ``results.json``; the outside volume is
scored by ``eval_unseen.py``'s protocol through ``stage=predict``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from _bench import write_result

from mrsr.protocols.unseen import evaluate_unseen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--volume", required=True)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.runs:
            name, run = item.split("=", 1)
            run = Path(run)
            test = next(
                r for r in json.loads((run / "results.json").read_text()) if r["method"] == "sr"
            )
            ckpt = json.loads((run / "FINISHED.json").read_text())["best"]
            r = evaluate_unseen(args.volume, args.scale, ckpt, 2, 1.0, Path(tmp))
            row = {
                "name": name,
                "run": str(run),
                "test_psnr_vol": test["psnr_vol"],
                "test_ssim_vol": test["ssim_vol"],
                "test_hfen_vol": test.get("hfen_vol"),
                "unseen": r,
            }
            rows.append(row)
            print(
                f"{name:<40} test {test['psnr_vol']:.2f} dB / HFEN "
                f"{test.get('hfen_vol', float('nan')):.4f}; "
                f"{r['volume']} {r['sr_psnr']:.2f} dB ({r['gain_db']:+.2f}) / HFEN "
                f"{r['sr_hfen']:.4f}",
                flush=True,
            )
    write_result(args.out, {"volume": args.volume, "scale": args.scale, "rows": rows})


if __name__ == "__main__":
    main()
