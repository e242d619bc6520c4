"""Response of extractor features to detail above the LR Nyquist (the decisive experiment).

For HR patches of the demo data's test subject (seg3d T1, axial, normalised as the data modules
do), :func:`mrsr.metrics.detail_response.detail_response` of each given stage-``vit`` /
stage-``disent`` checkpoint at x2 and x4, and of a randomly initialised extractor of the same
architecture at the same pixel scale (a reference): 0 = the features (hence L_ViT, L_str,
L_tex) are blind to what SR adds, 1 = they change as much as between two different patches.

    python experiments/detail_response.py --vit scale1=VIT.ckpt old=VIT_OLD.ckpt \\
        --disent scale1=DISENT.ckpt old=DISENT_OLD.ckpt [--out results.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from _bench import write_result
from torch import nn

from mrsr.checkpoint import load_checkpoint
from mrsr.extractors import load_disent_extractor, load_vit_extractor
from mrsr.metrics.detail_response import LOWPASSES, demo_patches, detail_response

STAGES: dict[str, Callable[..., nn.Module]] = {
    "vit": load_vit_extractor,
    "disent": load_disent_extractor,
}


def measure(
    stage: str, path: str, hr: torch.Tensor, scales: list[int], seed: int
) -> dict[str, Any]:
    """Responses of the checkpoint's extractor and of a random one (same net, same pixel scale)."""
    ext = STAGES[stage](path)
    ckpt = load_checkpoint(path, stage=stage)
    meta = ckpt["mrsr"]["config"]
    torch.manual_seed(seed)
    rand = STAGES[stage](path, random_init=True)
    return {
        "checkpoint": path,
        "global_step": ckpt.get("global_step"),
        "pixel_scale": ext.pixel_scale,
        "input_size": list(ext.input_size(*hr.shape[-2:]) or ()),
        "config": {
            k: meta.get(k) for k in ("train_crop", "mim_weight", "lr_views", "scale") if k in meta
        },
        "trained": {f"x{s}": detail_response(ext, hr, s) for s in scales},
        "random": {f"x{s}": detail_response(rand, hr, s) for s in scales},
    }


def summary(response: dict[str, float]) -> str:
    """One line: the responses to the bicubic and the ideal low-pass."""
    return "  ".join(f"{k} {v:.4f}" for k, v in response.items() if not k.startswith("reference/"))


def labelled(items: list[str]) -> dict[str, str]:
    """``LABEL=PATH`` arguments as a dict (a bare path is labelled by its position)."""
    return dict(
        item.split("=", 1) if "=" in item else (str(i), item) for i, item in enumerate(items)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit", nargs="*", default=[], metavar="LABEL=CKPT")
    ap.add_argument("--disent", nargs="*", default=[], metavar="LABEL=CKPT")
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--patches", type=int, default=64, help="HR patches of the test subject")
    ap.add_argument("--size", type=int, default=96, help="patch side (the SR training crop)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random extractors")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    hr = demo_patches(args.patches, args.size)
    result: dict[str, Any] = {
        "patches": {
            "n": args.patches,
            "size": args.size,
            "subject": "seg3d T1 (demo test subject)",
        },
        "lowpasses": list(LOWPASSES),
        "seed": args.seed,
        "command": " ".join(["python", *sys.argv]),
        # the image itself as the feature (1 - cos of the pixels): how much of what tells two
        # patches apart is detail above the LR Nyquist, for comparison with the extractors
        "pixels": {f"x{s}": detail_response(nn.Flatten(), hr, s) for s in args.scales},
    }
    for stage in STAGES:
        runs = {
            label: measure(stage, path, hr, args.scales, args.seed)
            for label, path in labelled(getattr(args, stage)).items()
        }
        if runs:
            result[stage] = runs
        for label, run in runs.items():
            for kind in ("trained", "random"):
                for s, r in run[kind].items():
                    print(f"{stage:6s} {label:8s} {kind:7s} {s}  {summary(r)}")
    for s, r in result["pixels"].items():
        print(f"pixels {'':8s} {'':7s} {s}  {summary(r)}")
    if args.out:
        write_result(args.out, result)


if __name__ == "__main__":
    main()
