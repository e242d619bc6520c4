"""Ship a stage-``sr`` run as the package's bundled quick-start model of its scale.

    python experiments/bundle_model.py outputs/sr/<run>     # a finished run folder
    python experiments/bundle_model.py outputs/sr/<run> \\
        --ckpt outputs/sr/<run>/checkpoints/last.ckpt

Writes ``mrsr/assets/models/quickstart_x<scale>.ckpt``: the EMA generator of the run's tested
checkpoint and its metadata (no optimiser, no discriminator), plus the run's test figures.
``stage=predict`` without ``ckpt`` loads it (safely, like every checkpoint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mrsr
from mrsr.generators import export_generator, load_generator

MODELS = Path(__file__).resolve().parents[1] / "mrsr" / "assets" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished stage-sr run folder (holds FINISHED.json)")
    ap.add_argument(
        "--ckpt", default=None, help="ship this checkpoint of the run (default: its tested best)"
    )
    args = ap.parse_args()
    run = Path(args.run)
    finished = json.loads((run / "FINISHED.json").read_text())
    ckpt = Path(args.ckpt or finished["best"])
    scale = int(load_generator(str(ckpt)).scale)
    out = export_generator(
        ckpt,
        MODELS / f"quickstart_x{scale}.ckpt",
        test=finished.get("test", {}) if not args.ckpt else {},
        version=mrsr.__version__,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) from {ckpt}")


if __name__ == "__main__":
    main()
