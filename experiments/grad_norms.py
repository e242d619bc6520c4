"""Gradient norms of every SR loss term on the SR image, relative to the L1 term's.

At a given generator (e.g. the L1 phase of a sweep) and frozen extractors, for training batches
of the demo data: ``||d term / d SR||`` for the pixel L1 (vs HR), and for L_ViT, L_str and L_tex
under each target (``hr``, ``lr``, ``dc``) and feature mode (``pooled``, ``spatial``). The ratio
to the L1 norm is the weight that would give the term as much pull as L1 (what
a ``relative`` term's weight sets at the first fine-tuning step); a tiny ratio means the term barely
moves the image at that weight.

    python experiments/grad_norms.py --sr SR.ckpt --vit VIT.ckpt --disent DISENT.ckpt \\
        [--batches 4] [--out results.json] [overrides ...]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _bench import write_result

from mrsr.building import build_datamodule
from mrsr.config import compose
from mrsr.extractors import load_disent_extractor as load_disent
from mrsr.extractors import load_vit_extractor as load_vit
from mrsr.generators import load_generator
from mrsr.losses.objective import SRObjective


def grad_norm_on(x: torch.Tensor):
    """``t -> ||d t / d x||``."""

    def norm(t: torch.Tensor) -> float:
        (g,) = torch.autograd.grad(t, x, retain_graph=True)
        return float(g.norm())

    return norm


def feature_terms(target: str, spatial: bool) -> dict:
    """A loss of L_ViT, L_str and L_tex at weight 1 against ``target`` (z_t stays a vector)."""
    classes = {"vit": "ViTTerm", "str": "StructureTerm", "tex": "TextureTerm"}
    return {
        "terms": {
            k: {"_target_": f"mrsr.losses.terms.{c}", "target": target}
            | ({} if k == "tex" else {"spatial": spatial})
            for k, c in classes.items()
        }
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sr", required=True)
    ap.add_argument("--vit", required=True)
    ap.add_argument("--disent", required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", default=["experiment=sweep_demo"])
    args = ap.parse_args()
    cfg = compose(["stage=sr", *args.overrides])
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    gen = load_generator(args.sr, scale=int(cfg.scale))
    vit, dis = load_vit(args.vit), load_disent(args.disent)
    norms: dict[str, list[float]] = {}
    for i, (lr, hr, _) in enumerate(dm.train_dataloader()):
        if i >= args.batches:
            break
        sr = gen(lr).detach().requires_grad_(True)
        gnorm = grad_norm_on(sr)
        norms.setdefault("pixel L1 vs HR", []).append(gnorm(torch.nn.functional.l1_loss(sr, hr)))
        for target in ("hr", "lr", "dc"):
            for mode in ("pooled", "spatial"):
                obj = SRObjective(
                    feature_terms(target, spatial=mode == "spatial"),
                    int(cfg.scale),
                    dm.operator.name,
                    vit,
                    dis,
                )
                for k, v in obj.terms(lr, hr, sr).items():
                    if k != "pixel":
                        norms.setdefault(f"{k} target={target} {mode}", []).append(gnorm(v))
    ref = statistics.mean(norms["pixel L1 vs HR"])
    rows = [
        {"term": k, "grad_norm": statistics.mean(v), "ratio_to_l1": statistics.mean(v) / ref}
        for k, v in norms.items()
    ]
    for r in rows:
        print(f"{r['term']:<28} {r['grad_norm']:.3e}  x{r['ratio_to_l1']:.2e} of L1")
    if args.out:
        write_result(
            args.out,
            {
                "sr": args.sr,
                "vit": args.vit,
                "disent": args.disent,
                "batches": args.batches,
                "overrides": args.overrides,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
