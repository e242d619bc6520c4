"""The decisive experiment: do the paper's feature terms help? One command, all arms.

The protocol, hypothesis and decision rule are fixed in
``docs/results/decisive-preregistration.md`` (committed before any run); this script
runs it and evaluates the rule mechanically. ``--out`` holds the runs and caches; the record
(``record.json``, ``per_slice.json``, ``table.md``) goes to ``--record``
(default ``records/<date>-decisive-<scales>-<cpu|gpu>``).

    python experiments/decisive.py --outside mni_t1.nii.gz --out outputs/decisive
    # two cores: one scale per process and thread, in parallel (each trains its own small ViT)
    export OMP_NUM_THREADS=1
    python experiments/decisive.py --outside mni_t1.nii.gz --out outputs/dec_x4 --scales 4 &
    python experiments/decisive.py --outside mni_t1.nii.gz --out outputs/dec_x2 --scales 2
    python experiments/decisive.py --outside mni_t1.nii.gz --out outputs/decisive_gpu \\
        --device cuda --precision bf16-mixed --start-steps 4000 --arm-steps 2000

Steps (each is skipped when its output exists, so an interrupted run continues):
1. per scale, the shared L1 start (``stage=sr experiment=demo loss=l1``) and the extractors
   at pixel scale 1 (``stage=vit vit=tiny_sr``, ``stage=disent disent=tiny_sr``), as
   ``python -m mrsr.run`` runs them;
2. per scale and seed, the four arms in this process: the training patches are drawn once
   per scale by the demo data module and held on the device; every arm of a seed sees the
   same batches; each arm is a Lightning fit of the package's ``SRModule`` (composed from
   ``experiment=decisive loss=<preset>``), so no per-run start-up beyond the Trainer;
3. every arm's EMA generator scored on the held-out subject and the outside volume
   (``mrsr.metrics``: distortion, realism/structure, consistency, a fresh critic);
4. paired bootstrap intervals against A, B and D, the rule, ``record.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from _bench import device_name, record_folder, write_result
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from mrsr.building import build_datamodule, build_module
from mrsr.config import compose
from mrsr.data.degrade import crop_to_multiple, degrade, normalise_volume
from mrsr.data.readers import read_nifti_canonical
from mrsr.data.sources import demo_dir
from mrsr.extractors import load_disent_extractor, load_vit_extractor
from mrsr.metrics import FOREGROUND, hfen, psnr, psnr_fg, ssim
from mrsr.metrics import realism as rm
from mrsr.metrics.detail_response import detail_response, tile_patches
from mrsr.metrics.statistics import paired_bootstrap
from mrsr.ops import upsample
from mrsr.report.records import command, git_commit, write_record
from mrsr.stage_process import run_stage

log = logging.getLogger("decisive")
PREREGISTRATION = (
    Path(__file__).resolve().parents[1] / "docs" / "results" / "decisive-preregistration.md"
)
ARMS = {"A": "l1", "B": "gan", "C": "gan_feat", "D": "gan_feat"}  # D: random extractors
ARM_LABELS = {
    "A": "L1 continued",
    "B": "L1 + GAN",
    "C": "L1 + GAN + ViT/str/tex (trained extractors)",
    "D": "L1 + GAN + ViT/str/tex (random extractors)",
}
# metric -> direction: +1 higher is better, -1 lower is better ("hf_power" is scored as |.|)
REALISM = {
    "hf_power": -1,
    "grad_w1": -1,
    "critic": -1,
    "hfen_07": -1,
    "edge_f1": 1,
    "tissue_dice": 1,
}
OTHER = {"psnr_fg": 1, "psnr": 1, "ssim": 1, "hfen_15": -1, "redeg": -1}
DIRECTION = {**REALISM, **OTHER}
PSNR_GUARD_DB = 0.1
MAX_SLICES = 48
CRITIC_PATCH = 48
PATCHES_PER_SLICE = 8


# ---------------------------------------------------------------------------- configs and stages
def stage_checkpoint(folder: Path, overrides: list[str]) -> str:
    """``python -m mrsr.run <overrides>`` into ``folder`` (skipped when finished); its best
    checkpoint."""
    finished = folder / "FINISHED.json"
    run_stage(overrides, folder, skip_if=finished, logger=log)
    return json.loads(finished.read_text())["best"]


def shown(path: str) -> str:
    """``path`` as the record shows it: relative to the working folder when inside it."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def random_like(kind: str, path: str, seed: int) -> nn.Module:
    """The extractor of checkpoint ``path`` with its architecture but random weights (arm D)."""
    loader = load_vit_extractor if kind == "vit" else load_disent_extractor
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return loader(path, random_init=True)


# ---------------------------------------------------------------------------- training data
def training_pool(scale: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``n`` (LR, HR) training patches of the demo recipe (seed 42), drawn by the data module."""
    cfg = compose(["stage=sr", "experiment=decisive", f"scale={scale}", "seed=42"])
    L.seed_everything(42)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    lrs, hrs, got = [], [], 0
    while got < n:
        for lr, hr, _ in dm.train_dataloader():
            lrs.append(lr)
            hrs.append(hr)
            got += lr.shape[0]
            if got >= n:
                break
    return torch.cat(lrs)[:n].to(device), torch.cat(hrs)[:n].to(device)


class PoolBatches(IterableDataset):
    """Endless batches from a device-resident pool in one order per seed (every arm of a seed
    sees the same batches)."""

    def __init__(self, lr: Tensor, hr: Tensor, batch: int, seed: int) -> None:
        self.lr, self.hr, self.batch, self.seed = lr, hr, batch, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(len(self.hr), generator=g).to(self.hr.device)
            for i in range(0, len(order) - self.batch + 1, self.batch):
                idx = order[i : i + self.batch]
                yield self.lr[idx], self.hr[idx], None


# ---------------------------------------------------------------------------- one arm
def fine_tune(
    arm: str,
    scale: int,
    seed: int,
    start: str,
    extractors: dict[str, nn.Module],
    ckpts: dict[str, str],
    pool: tuple[Tensor, Tensor],
    args: argparse.Namespace,
) -> tuple[nn.Module, DictConfig, float]:
    """Fit arm ``arm`` from the start; its EMA generator, its config and the fit's seconds."""
    overrides = [
        "stage=sr",
        "experiment=decisive",
        f"loss={ARMS[arm]}",
        f"scale={scale}",
        f"seed={seed}",
        f"sr.init_from={start}",
        f"sr.max_steps={args.arm_steps}",
        *args.arm_override,
    ]
    cfg = compose(overrides)
    L.seed_everything(seed)
    given = {}
    if arm == "C":
        given = extractors
    elif arm == "D":
        given = {k: random_like(k, path, seed) for k, path in ckpts.items()}
    module = build_module(cfg, vit_extractor=given.get("vit"), disent_extractor=given.get("disent"))
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_steps=args.arm_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(PoolBatches(*pool, int(cfg.sr.batch_size), seed), batch_size=None)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return module.eval_generator.eval(), cfg, time.perf_counter() - t0


# ---------------------------------------------------------------------------- evaluation
def eval_slices(path: str | Path, scale: int) -> Tensor:
    """Up to MAX_SLICES evenly spaced axial (RAS+ axis 2) slices with >= 5 % foreground,
    normalised as the package normalises, cropped to a multiple of the scale (N, 1, H, W)."""
    vol = normalise_volume(read_nifti_canonical(path))
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, 2, 0)))[:, None].float()
    keep = ((x > FOREGROUND).float().mean((1, 2, 3)) >= 0.05).nonzero().flatten()
    if len(keep) > MAX_SLICES:
        keep = keep[torch.linspace(0, len(keep) - 1, MAX_SLICES).round().long()]
    return crop_to_multiple(x[keep], scale)


def critic_locations(hr: Tensor, seed: int = 0) -> Tensor:
    """Fixed patch corners (slice, top, left) with >= 25 % foreground, PATCHES_PER_SLICE per
    slice."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = hr.shape
    p = CRITIC_PATCH
    out = []
    for i in range(n):
        found = 0
        for _ in range(50 * PATCHES_PER_SLICE):
            t, lft = (
                int(torch.randint(0, h - p + 1, (), generator=g)),
                int(torch.randint(0, w - p + 1, (), generator=g)),
            )
            if (hr[i, 0, t : t + p, lft : lft + p] > FOREGROUND).float().mean() >= 0.25:
                out.append((i, t, lft))
                found += 1
                if found == PATCHES_PER_SLICE:
                    break
    return torch.tensor(out)


def patches(x: Tensor, where: Tensor) -> Tensor:
    p = CRITIC_PATCH
    return torch.stack([x[i, :, t : t + p, lft : lft + p] for i, t, lft in where.tolist()])


@torch.no_grad()
def super_resolve(gen: nn.Module, lr: Tensor, device: torch.device, precision: str) -> Tensor:
    """``gen`` on ``lr`` in chunks of 8 at ``precision``, clamped at 0. Not
    :func:`mrsr.inference.super_resolve_volume`: that one holds outliers back and always runs
    bf16 on a GPU, where the protocol scores the arms at ``--precision`` (on a CPU it gives the
    same numbers with ``limit=inf``, no background cropping and no channels-last)."""
    out = []
    for chunk in lr.split(8):
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16")
        ):
            out.append(gen(chunk.to(device)).float().clamp(min=0).cpu())
    return torch.cat(out)


def score(
    sr: Tensor, hr: Tensor, lr: Tensor, scale: int, kind: str, where: Tensor | None, seed: int
) -> dict[str, list]:
    """Per-slice values of every metric (the critic: per held-out patch correctness)."""
    vals = {
        "psnr_fg": psnr_fg(sr, hr),
        "psnr": psnr(sr, hr),
        "ssim": ssim(sr, hr),
        "hfen_15": hfen(sr, hr),
        **rm.realism_values(sr, hr, lr, scale, kind),
    }
    vals["hf_power"] = vals["hf_power"].abs()  # scored as the distance from HR's band power
    out = {k: [float(x) for x in v.flatten()] for k, v in vals.items()}
    if where is not None:
        correct = rm.critic_correct(patches(sr, where), patches(hr, where), seed=seed)
        out["critic"] = [float(x) for x in correct]
    return out


# ------------------------------------------------------------------------ statistics and the rule
def mean_over_seeds(per_seed: list[list[float]]) -> np.ndarray:
    return np.nanmean(np.asarray(per_seed, dtype=np.float64), axis=0)


def compare(values: dict, x: str, y: str) -> dict[str, dict[str, float]]:
    """Per metric: the seed-averaged paired difference X - Y, oriented so positive = X better."""
    out = {}
    for metric, direction in DIRECTION.items():
        if metric not in values[x] or metric not in values[y]:
            continue
        d = direction * (mean_over_seeds(values[x][metric]) - mean_over_seeds(values[y][metric]))
        out[metric] = paired_bootstrap(d)
    return out


def wins(comparisons: dict[str, dict], volumes: list[str], pair: str, metrics) -> list[str]:
    """Metrics whose interval excludes 0 in the first arm's favour on every volume."""
    return [m for m in metrics if all(comparisons[v][pair][m]["lo"] > 0 for v in volumes)]


def decide(
    comparisons: dict[str, dict], means: dict[str, dict], volumes: list[str]
) -> dict[str, Any]:
    """The pre-registered rule at one scale (PREREGISTRATION.md)."""
    h1 = wins(comparisons, volumes, "C-B", REALISM)
    guard = {v: means[v]["C"]["psnr_fg"] - means[v]["B"]["psnr_fg"] for v in volumes}
    h2 = all(g >= -PSNR_GUARD_DB for g in guard.values())
    h3 = wins(comparisons, volumes, "C-D", h1)
    helps = len(h1) >= 2 and h2 and len(h3) >= 2
    return {
        "H1_metrics": h1,
        "H1": len(h1) >= 2,
        "H2_psnr_fg_C_minus_B": guard,
        "H2": h2,
        "H3_metrics": h3,
        "H3": len(h3) >= 2,
        "verdict": "the paper's terms help" if helps else "not shown",
    }


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outside", required=True, help="the outside volume (MNI ICBM152 2009a T1)")
    ap.add_argument(
        "--out", required=True, help="folder of the runs and caches (an interrupted run continues)"
    )
    ap.add_argument(
        "--record",
        default=None,
        help="record folder (default: records/<date>-decisive-<scales>-<cpu|gpu>)",
    )
    ap.add_argument("--scales", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--start-steps", type=int, default=1000)
    ap.add_argument("--arm-steps", type=int, default=400)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument(
        "--stage-override",
        nargs="*",
        default=[],
        help="extra overrides of the start and extractor runs",
    )
    ap.add_argument("--arm-override", nargs="*", default=[], help="extra overrides of every arm")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("lightning", "lightning.pytorch", "mrsr"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out, device = Path(args.out), torch.device(args.device)
    scales = "-".join(f"x{s}" for s in args.scales)
    kind = "gpu" if device.type == "cuda" else "cpu"
    record_dir = Path(args.record) if args.record else record_folder(f"decisive-{scales}-{kind}")
    volumes = {"seg3d": demo_dir() / "seg3d_T1.nii.gz", "outside": Path(args.outside)}
    trainer_args = [f"trainer.accelerator={args.device}", f"trainer.precision={args.precision}"]
    started = time.time()
    vit_ckpt = stage_checkpoint(
        out / "extractors" / "vit",
        ["stage=vit", "experiment=decisive", *trainer_args, *args.stage_override],
    )
    record: dict[str, Any] = {
        "experiment": "decisive",
        "preregistration": PREREGISTRATION.relative_to(PREREGISTRATION.parents[2]).as_posix(),
        "commit": git_commit()[0] or "unknown",
        "command": command(),
        "device": device_name(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "args": vars(args),
        "arm_labels": ARM_LABELS,
        "scales": {},
    }
    per_slice: dict[str, Any] = {}
    for scale in args.scales:
        start = stage_checkpoint(
            out / f"start_x{scale}",
            [
                "stage=sr",
                "experiment=demo",
                "loss=l1",
                f"scale={scale}",
                "seed=42",
                f"sr.max_steps={args.start_steps}",
                *trainer_args,
                *args.stage_override,
            ],
        )
        dis_ckpt = stage_checkpoint(
            out / "extractors" / f"disent_x{scale}",
            [
                "stage=disent",
                "experiment=decisive",
                f"scale={scale}",
                *trainer_args,
                *args.stage_override,
            ],
        )
        ckpts = {"vit": vit_ckpt, "disent": dis_ckpt}
        extractors = {
            "vit": load_vit_extractor(vit_ckpt).to(device),
            "disent": load_disent_extractor(dis_ckpt).to(device),
        }
        hr = {v: eval_slices(p, scale) for v, p in volumes.items()}
        where = {v: critic_locations(x) for v, x in hr.items()}
        lr = {(v, k): degrade(x, scale, k) for v, x in hr.items() for k in ("bicubic", "kspace")}
        probe = tile_patches(hr["seg3d"], 96, 64).to(device)  # what the SR loss's patches look like
        response = {
            name: {
                "trained": detail_response(e, probe, scale),
                "random": detail_response(
                    random_like(name, ckpts[name], 0).to(device), probe, scale
                ),
            }
            for name, e in extractors.items()
        }
        pool = training_pool(scale, (args.arm_steps + 200) * 16, device)
        values: dict[str, dict] = {}  # "<volume>/<kind>" -> arm -> metric -> [per seed [per slice]]
        fits: dict[str, list[float]] = {}
        for seed in args.seeds:
            for arm in args.arms:
                cache = out / "arms" / f"x{scale}_{arm}_{seed}.json"
                if cache.is_file():
                    res = json.loads(cache.read_text())
                else:
                    gen, cfg, secs = fine_tune(
                        arm, scale, seed, start, extractors, ckpts, pool, args
                    )
                    res = {
                        "fit_s": secs,
                        "config": OmegaConf.to_container(cfg.loss, resolve=True),
                        "scores": {},
                    }
                    for v in volumes:
                        for kind in ("bicubic", "kspace"):
                            sr = super_resolve(gen, lr[(v, kind)], device, args.precision)
                            res["scores"][f"{v}/{kind}"] = score(
                                sr,
                                hr[v],
                                lr[(v, kind)],
                                scale,
                                kind,
                                where[v] if kind == "bicubic" else None,
                                seed,
                            )
                    write_result(cache, res)
                fits.setdefault(arm, []).append(res["fit_s"])
                for key, metrics in res["scores"].items():
                    for m, vals in metrics.items():
                        values.setdefault(key, {}).setdefault(arm, {}).setdefault(m, []).append(
                            vals
                        )
                log.info(
                    "x%d arm %s seed %d: %s",
                    scale,
                    arm,
                    seed,
                    ", ".join(
                        f"{m} {np.nanmean(res['scores']['seg3d/bicubic'][m]):.4f}"
                        for m in ("psnr_fg", "hf_power", "edge_f1")
                    ),
                )
        pairs = [("C", "B"), ("C", "D"), ("B", "A"), ("C", "A")]
        comparisons = {
            key: {
                f"{x}-{y}": compare(values[key], x, y)
                for x, y in pairs
                if x in values[key] and y in values[key]
            }
            for key in values
        }
        means = {
            key: {
                arm: {m: float(np.nanmean(mean_over_seeds(v))) for m, v in ms.items()}
                for arm, ms in arms.items()
            }
            for key, arms in values.items()
        }
        spread = {
            key: {
                arm: {
                    m: float(np.std([np.nanmean(s) for s in v], ddof=1)) if len(v) > 1 else 0.0
                    for m, v in ms.items()
                }
                for arm, ms in arms.items()
            }
            for key, arms in values.items()
        }
        bicubic = {
            f"{v}/{k}": score(
                upsample(lr[(v, k)], scale),
                hr[v],
                lr[(v, k)],
                scale,
                k,
                where[v] if k == "bicubic" else None,
                args.seeds[0],
            )
            for v in volumes
            for k in ("bicubic", "kspace")
        }
        primary = [f"{v}/bicubic" for v in volumes]
        decision = (
            decide({v: comparisons[v] for v in primary}, {v: means[v] for v in primary}, primary)
            if all(a in args.arms for a in ARMS)
            else None
        )
        record["scales"][f"x{scale}"] = {
            "start": shown(start),
            "extractors": {"vit": shown(vit_ckpt), "disent": shown(dis_ckpt)},
            "detail_response": response,
            "n_slices": {v: len(x) for v, x in hr.items()},
            "n_critic_patches": {v: len(w) for v, w in where.items()},
            "fit_s": fits,
            "means": means,
            "seed_std": spread,
            "bicubic": {
                k: {m: float(np.nanmean(v)) for m, v in s.items()} for k, s in bicubic.items()
            },
            "comparisons": comparisons,
            "decision": decision,
        }
        per_slice[f"x{scale}"] = values
        log.info("x%d decision: %s", scale, json.dumps(decision))
        record["wall_s"] = time.time() - started
        # after each scale: a stopped run keeps what it finished
        write_records(record_dir, record, per_slice)
    print(render(record))


def write_records(folder: Path, record: dict[str, Any], per_slice: dict[str, Any]) -> None:
    """The record: ``record.json`` (provenance, the decision and every mean and interval),
    ``per_slice.json`` (6 significant digits) and ``table.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "per_slice.json").write_text(
        json.dumps(_rounded(per_slice), separators=(",", ":")) + "\n"
    )
    (folder / "table.md").write_text(render(record))
    scales = ", ".join(record["scales"])
    write_record(
        folder,
        title=f"The decisive experiment ({scales}, {record['device']})",
        protocol=(
            f"Pre-registered in {record['preregistration']}; this record applies its decision rule."
        ),
        metrics={
            k: v for k, v in record.items() if k not in ("args", "device", "commit", "command")
        },
        config=record["args"],
        device=record["device"],
        files=["per_slice.json", "table.md"],
        table=headline_table(record),
    )


HEADLINE = (
    ("psnr_fg", "PSNR-fg", 2),
    ("critic", "critic", 2),
    ("hf_power", "HF power", 2),
    ("edge_f1", "edge F1", 3),
)


def headline_table(record: dict[str, Any]) -> dict[str, Any]:
    """The record's table: per scale and arm, PSNR-fg (± std over seeds), critic accuracy, HF
    power and edge F1 on both volumes, LR by bicubic (the training operator); the verdict."""
    volumes = {"seg3d": "seg3d", "outside": "MNI"}
    columns = ["scale", "arm"] + [
        f"{name} {label}" for name in volumes.values() for _, label, _ in HEADLINE
    ]
    rows, verdicts = [], []
    for scale, s in record["scales"].items():
        arms = [("bicubic", None)] + [(arm, arm) for arm in s["means"]["seg3d/bicubic"]]
        for title, arm in arms:
            cells = [scale, title if arm is None else f"{arm}: {record['arm_labels'][arm]}"]
            for vol in volumes:
                key = f"{vol}/bicubic"
                means = s["bicubic"][key] if arm is None else s["means"][key][arm]
                for metric, _, digits in HEADLINE:
                    cell = f"{means[metric]:.{digits}f}" if metric in means else "—"
                    spread = 0.0 if arm is None else s["seed_std"][key][arm].get(metric, 0.0)
                    if metric == "psnr_fg" and spread > 0:
                        cell += f" ± {spread:.2f}"
                    cells.append(cell)
            rows.append(cells)
        if s.get("decision"):
            verdicts.append(f"{scale}: {s['decision']['verdict']}")
    seeds = len(record["args"]["seeds"])
    caption = (
        f"Mean over {seeds} seed(s) of the slice means, LR by antialiased bicubic; ± = std over "
        "seeds. Critic: held-out accuracy of a fresh critic telling SR from HR patches (0.5 = "
        "indistinguishable). HF power: |log10| of SR/HR power above the LR Nyquist (0 best). "
        f"Verdict {'; '.join(verdicts) or 'not evaluated'}."
    )
    return {"caption": caption, "columns": columns, "rows": rows}


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def render(record: dict[str, Any]) -> str:
    """The record as Markdown: means per arm, the intervals of C-B and C-D, the decision."""
    lines = [
        f"# Decisive experiment ({record['device']}, {record['precision']}, "
        f"commit {record['commit'][:8]})",
        "",
        f"Protocol: `{record['preregistration']}`. Command: `{record['command']}`.",
        "",
    ]
    cols = ["psnr_fg", "ssim", "hfen_15", *REALISM, "redeg"]
    for scale, s in record["scales"].items():
        for key in s["means"]:
            lines += [
                f"## {scale}, {key.replace('/', ', LR by ')} "
                f"(mean over {len(record['args']['seeds'])} seeds of the "
                f"slice means; {s['n_slices'][key.split('/')[0]]} slices)",
                "",
                "| arm | " + " | ".join(cols) + " |",
                "|---" * (len(cols) + 1) + "|",
            ]
            b = s["bicubic"][key]
            lines.append(
                "| bicubic | " + " | ".join(f"{b.get(c, float('nan')):.4f}" for c in cols) + " |"
            )
            for arm, m in s["means"][key].items():
                lines.append(
                    f"| {arm}: {record['arm_labels'][arm]} | "
                    + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in cols)
                    + " |"
                )
            lines.append("")
            for pair, comp in s["comparisons"][key].items():
                lines.append(
                    f"- {pair} (positive = {pair[0]} better): "
                    + ", ".join(
                        f"{m} {c['mean']:+.4g} [{c['lo']:+.4g}, {c['hi']:+.4g}]"
                        for m, c in comp.items()
                    )
                )
            lines.append("")
        if s["decision"]:
            d = s["decision"]
            lines += [
                f"**{scale} decision: {d['verdict']}** "
                f"(H1 {d['H1']}: {d['H1_metrics']}; H2 {d['H2']}: "
                + ", ".join(f"{k} {v:+.3f} dB" for k, v in d["H2_psnr_fg_C_minus_B"].items())
                + f"; H3 {d['H3']}: {d['H3_metrics']})",
                "",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
