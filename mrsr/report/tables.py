"""Collect a sweep's finished SR runs into Table-1/2-style Markdown and CSV and a figure.

``python -m mrsr.report <sweep folder> [<sweep folder> ...] [--out DIR] [--no-figure]``

Every ``results.json`` below the folder (a ``stage=sr`` job folder, or the ``sr/`` folder
of a ``stage=pipeline`` job) is one finished run; its rows say what it was (loss preset and
network with their labels, seed, generator updates). Rows: bicubic, the comparison networks
(``model=srcnn``, ``edsr``, ...), the ``l1`` baseline (the default), the other loss presets
(the paper's full method, each ablation, ...); columns: scale x PSNR / SSIM / NMSE (and HFEN,
PSNR and SSIM over the foreground where the results have them), mean ± std over the test volumes
(``psnr_vol ± psnr_vol_std``, ...); parameter count and inference time per test slice where the
results have them. A metric that no run of a table has is left out of it;
a run without a metric that others have shows "—" there (results written before it existed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mrsr.config import config_orders
from mrsr.files import atomic_write_text
from mrsr.labels import L1_PHASE
from mrsr.metrics import REALISM

# Row order: the classical baselines, the comparison networks, then the SRResNet loss presets,
# each by the ``order`` of its config; labels are the configs' own (``label:`` in conf/loss and
# conf/model), carried by the rows.
BASELINES = ("bicubic", "zerofill")  # classical rows: the same for every run of a dataset/scale
BASELINE_LABELS = {"bicubic": "bicubic", "zerofill": "zero-filling (sinc)"}
COST = ("params", "ms_per_slice")
# realism/structure/consistency (mrsr.metrics.realism; rows of 0.8+ have them)
METRICS = ("psnr", "ssim", "nmse", "hfen", "psnr_fg", "ssim_fg", *REALISM)
DIGITS = {
    "psnr": 2,
    "ssim": 4,
    "nmse": 4,
    "hfen": 4,
    "psnr_fg": 2,
    "ssim_fg": 4,
    "hf_power": 3,
    "grad_w1": 4,
    "hfen_07": 4,
    "edge_f1": 4,
    "tissue_dice": 4,
    "redeg": 4,
}
LABELS = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "nmse": "NMSE",
    "hfen": "HFEN",
    "psnr_fg": "PSNR-fg",
    "ssim_fg": "SSIM-fg",
    "hf_power": "HF power (log10, 0 best)",
    "grad_w1": "grad W1",
    "hfen_07": "HFEN 0.7",
    "edge_f1": "edge F1",
    "tissue_dice": "tissue Dice",
    "redeg": "re-degradation",
}


class ReportError(Exception):
    """A sweep folder that cannot be reported on (one line)."""


@dataclass
class Run:
    """One finished run: its results rows, which say what it was (loss preset, network, seed,
    budget), and its job folder (whose config the figure reads its test data from)."""

    folder: Path  # where results.json is
    rows: list[dict[str, Any]]
    preset: str
    model: str | None = None
    seed: Any = None
    job: Path | None = None  # the Hydra job folder (with .hydra/), when there is one

    def config(self) -> dict[str, Any]:
        """The job's composed config (``.hydra/config.yaml``; empty when there is none)."""
        return _load_yaml(self.job / ".hydra" / "config.yaml") if self.job else {}


def _job_folder(folder: Path, top: Path) -> Path | None:
    for cand in (folder, *folder.parents):
        if (cand / ".hydra").is_dir():
            return cand
        if cand == top:
            break
    return None


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def collect(sweep: str | Path) -> list[Run]:
    """The finished runs below ``sweep`` (folders with a ``results.json``), in path order; the L1
    phase of a two-phase run is not a row of the tables."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise ReportError(f"{sweep}: not a folder")
    runs = []
    for path in sorted(sweep.rglob("results.json")):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(rows, list) or not rows or rows[0].get("loss") == L1_PHASE:
            continue
        first = rows[0]
        runs.append(
            Run(
                path.parent,
                rows,
                str(first.get("loss") or "?"),
                first.get("model"),
                first.get("seed"),
                _job_folder(path.parent, sweep),
            )
        )
    if not runs:
        raise ReportError(f"{sweep}: no finished runs (no results.json below it)")
    return runs


def budget(row: dict[str, Any]) -> str:
    """A run's SR budget in generator updates, from its results row: ``700 updates (350 L1 + 350
    fine-tuning)`` for a run started from another run's generator (``sr.init_from``, the L1
    phase of a pipeline), ``700 updates (one phase)`` otherwise; ``—`` when the row does not say."""
    if row.get("updates") is None:
        return "—"
    updates, start = int(row["updates"]), int(row.get("start_updates") or 0)
    if not start:
        return f"{updates} updates (one phase)"
    before = (
        "L1" if row.get("start_loss") in ("l1", L1_PHASE) else str(row.get("start_loss") or "start")
    )
    return f"{start + updates} updates ({start} {before} + {updates} fine-tuning)"


def method_name(model: str | None, preset: str) -> str:
    """A row's key: the loss preset for SRResNet runs (the paper's rows), else the network's
    config name (``edsr_small``), with ``+<preset>`` when it is not the ``l1`` protocol."""
    if model is None or model.startswith("srresnet"):
        return preset
    return model if preset == "l1" else f"{model}+{preset}"


def method_label(model: str | None, preset: str, row: dict[str, Any] | None = None) -> str:
    """The label of :func:`method_name`'s row in the Markdown table: the loss preset's ``label``
    for SRResNet runs, the network's ``label`` (with ``, loss=<preset>`` when it is not ``l1``)
    for the others; names where the results row carries no labels (written before labels)."""
    row = row or {}
    if model is None or model.startswith("srresnet"):
        return str(row.get("loss_label") or preset)
    label = str(row.get("model_label") or model)
    return label if preset == "l1" else f"{label}, loss={preset}"


def method_order(method: str) -> tuple[int, float, str]:
    """Sort key of a row: the classical baselines (bicubic, zero-filling), the comparison
    networks, then the SRResNet presets, each group by its configs' ``order``."""
    if method in BASELINES:
        return 0, BASELINES.index(method), method
    networks = config_orders("model")
    model = method.partition("+")[0]
    if model in networks:
        return 1, networks[model], method
    return 2, config_orders("loss").get(method, math.inf), method


def table_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One record per (dataset, degradation, method, scale).

    One run (one seed) of a method: the volume mean ± std over the test volumes of each metric.
    Several seeds: the mean ± sample std over seeds of each run's volume mean (``n_seeds``
    says how many). SR rows are named by the run's loss preset; bicubic is taken from the first
    run of each dataset/scale (it is the same for every run). A preset run twice with the same
    seed keeps the newest run.
    """
    by_seed: dict[tuple, dict[Any, dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r.folder / "results.json").stat().st_mtime):
        for row in run.rows:
            baseline = row.get("method") in BASELINES
            method = row["method"] if baseline else method_name(run.model, run.preset)
            key = (row.get("dataset"), row.get("degradation"), method, int(row["scale"]))
            if baseline and key in by_seed:
                continue
            rec = {
                "dataset": key[0],
                "degradation": key[1],
                "method": method,
                "scale": key[3],
                "run": str(run.folder),
                "budget": "—" if baseline else budget(row),
                "label": BASELINE_LABELS[method]
                if baseline
                else method_label(run.model, run.preset, row),
            }
            rec.update({k: row[k] for k in COST if row.get(k) is not None})
            if row.get("device"):
                rec["device"] = (
                    f"{row['device']}, {row['precision']}"
                    if row.get("precision")
                    else str(row["device"])
                )
            for m in METRICS:
                if f"{m}_vol" not in row and m not in row:
                    continue  # older results without this metric
                rec[m] = float(row.get(f"{m}_vol", row.get(m)))
                if f"{m}_vol_std" in row or m not in REALISM:  # realism: slice means, no volume std
                    rec[f"{m}_std"] = float(row.get(f"{m}_vol_std", 0.0))
            seeds = by_seed.setdefault(key, {})
            seed = None if baseline else run.seed
            if seed in seeds and not baseline and seeds[seed]["model"] != run.model:
                print(
                    f"mrsr.report: {method} x{key[3]} seed {seed}: {run.folder} "
                    f"(model={run.model}) replaces "
                    f"{seeds[seed]['run']} (model={seeds[seed]['model']})",
                    file=sys.stderr,
                )
            seeds[seed] = {**rec, "model": run.model}
    out = [_over_seeds(list(recs.values())) for recs in by_seed.values()]
    return sorted(
        out,
        key=lambda r: (
            str(r["dataset"]),
            str(r["degradation"]),
            method_order(r["method"]),
            r["scale"],
        ),
    )


def _over_seeds(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over the seeds' records (one record is returned as it is)."""
    if len(recs) == 1:
        return {**recs[0], "n_seeds": 1}
    out = {
        k: recs[-1][k]
        for k in ("dataset", "degradation", "method", "scale", "run", "budget", "label")
    }
    out["n_seeds"] = len(recs)
    out.update({k: recs[-1][k] for k in ("params", "model") if k in recs[-1]})
    devices = {r.get("device") for r in recs}
    times = [r["ms_per_slice"] for r in recs if "ms_per_slice" in r]
    if len(devices) == 1 and times:  # times from different devices are not averaged
        out["ms_per_slice"], out["device"] = sum(times) / len(times), recs[-1]["device"]
    elif len(devices) > 1:
        out["device"] = "several devices"
    for m in METRICS:
        vals = [r[m] for r in recs if m in r]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        out[m] = mean
        out[f"{m}_std"] = (sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5
    return out


def _present(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics (in :data:`METRICS` order) that at least one row has."""
    return [m for m in METRICS if any(m in r for r in rows)]


def _cell(r: dict[str, Any] | None, m: str) -> str:
    if r is None or m not in r:
        return "—"
    d = DIGITS[m]
    return f"{r[m]:.{d}f} ± {r[f'{m}_std']:.{d}f}" if f"{m}_std" in r else f"{r[m]:.{d}f}"


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["degradation"]), []).append(r)
    return groups


def _wide(
    rows: list[dict[str, Any]],
) -> tuple[list[int], list[tuple[str, dict[int, dict[str, Any]]]]]:
    scales = sorted({r["scale"] for r in rows})
    methods: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        methods.setdefault(r["method"], {})[r["scale"]] = r
    return scales, list(methods.items())


def _per_scale(by_scale: dict[int, dict[str, Any]], scales: list[int], key: str, fmt) -> str:
    if not any(key in (by_scale.get(s) or {}) for s in scales):
        return "—"
    return " / ".join(
        fmt(by_scale[s][key]) if key in (by_scale.get(s) or {}) else "—" for s in scales
    )


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown tables, one per dataset/degradation: methods x (scale x PSNR/SSIM/NMSE/...)."""
    parts = []
    for (dataset, degradation), group in _groups(rows).items():
        scales, methods = _wide(group)
        metrics = _present(group)
        cost = any("params" in r for r in group)
        head = ["method", *(["params", "ms / slice"] if cost else []), "SR budget", "seeds"]
        head += [f"x{s} {LABELS[m]}" for s in scales for m in metrics]
        seeds = max(int(r.get("n_seeds", 1)) for r in group)
        spread = (
            "mean ± std over the seeds of each row; bicubic and one-seed rows: over test volumes"
            if seeds > 1
            else "mean ± std over test volumes"
        )
        devices = sorted({str(r["device"]) for r in group if r.get("device")})
        lines = [f"**{dataset}**, {degradation} degradation ({spread})", ""]
        if any(m in REALISM for m in metrics):
            lines += [
                "HF power ... re-degradation: realism, structure and consistency "
                "(`mrsr.metrics.realism`), "
                "slice means over the test slices with foreground",
                "",
            ]
        if cost:
            per = " / ".join(f"x{s}" for s in scales)
            lines += [
                f"params and ms / slice per scale ({per}); "
                "ms / slice: the network's forward pass per test "
                "slice at the test batch size (median over batches), "
                f"on {', '.join(devices) or 'the test device'}",
                "",
            ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method, by_scale in methods:
            first = next(iter(by_scale.values()))
            cells = [str(first["label"])]
            if cost:
                ms = _per_scale(by_scale, scales, "ms_per_slice", lambda v: f"{v:.1f}")
                if len(devices) > 1 and first.get("device"):
                    ms += f" ({first['device']})"
                cells += [_per_scale(by_scale, scales, "params", lambda v: f"{v / 1e6:.3f} M"), ms]
            cells += [
                first.get("budget", "—"),
                "—" if method in BASELINES else str(first.get("n_seeds", 1)),
            ]
            for s in scales:
                cells += [_cell(by_scale.get(s), m) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Long-format CSV: one line per dataset, degradation, method and scale (a metric that
    no row has is left out, one that a row lacks is an empty field)."""
    buf = io.StringIO()
    cols = ["dataset", "degradation", "method", "scale"]
    cols += [f"{m}{s}" for m in _present(rows) for s in ("", "_std")]
    cols += [k for k in (*COST, "device") if any(k in r for r in rows)] + [
        "n_seeds",
        "budget",
        "run",
    ]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _finished_ckpt(run: Run) -> Path | None:
    path = run.folder / "FINISHED.json"
    if path.is_file():
        rec = json.loads(path.read_text())
        for key in ("best", "last"):
            if rec.get(key) and Path(rec[key]).is_file():
                return Path(rec[key])
    for name in ("best.ckpt", "last.ckpt"):
        if (run.folder / "checkpoints" / name).is_file():
            return run.folder / "checkpoints" / name
    return None


def make_figure(runs: list[Run], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Figure-2-style PNG: per scale, one test slice (LR, bicubic, each method, HR) and error
    maps."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from PIL import Image, ImageDraw

    from mrsr.building import build_datamodule
    from mrsr.generators import load_generator
    from mrsr.ops import upsample
    from mrsr.viz import make_grid

    by_folder = {str(r.folder): r for r in runs}
    blocks = []
    dataset = rows[0]["dataset"]
    for scale in sorted({r["scale"] for r in rows if r["dataset"] == dataset}):
        sr_rows = [
            r
            for r in rows
            if r["dataset"] == dataset and r["scale"] == scale and r["method"] not in BASELINES
        ]
        models = []
        for r in sr_rows:
            run = by_folder[r["run"]]
            ckpt = _finished_ckpt(run)
            if ckpt is not None:
                models.append((r["method"], load_generator(ckpt, scale=scale).eval(), run))
        if not models:
            continue
        cfg = OmegaConf.create(models[0][2].config())
        dm = build_datamodule(cfg)
        dm.setup("test")
        ds = dm.datasets["test"]
        lr, hr, _ = ds[len(ds) // 2]
        lr, hr = lr[None].float(), hr[None].float()
        with torch.inference_mode():
            outs = [("bicubic", upsample(lr, scale))]
            outs += [(name, g(lr).clamp(min=0)) for name, g, _ in models]
        images = [("LR", lr), *outs, ("HR", hr)]
        errors = [
            ("|LR", torch.zeros_like(hr)),
            *[(f"|{n}", o - hr) for n, o in outs],
            ("|HR", torch.zeros_like(hr)),
        ]
        grid = np.concatenate([make_grid(images, 1), make_grid(errors, 1)[2:]], axis=0)
        titles = [t for t, _ in images]
        blocks.append((f"x{scale}", titles, grid))
    if not blocks:
        return None
    width = max(g.shape[1] for _, _, g in blocks)
    canvas = []
    for label, titles, grid in blocks:
        head = Image.new("L", (width, 14), 255)
        draw = ImageDraw.Draw(head)
        col = (grid.shape[1] - 2) / len(titles)
        for i, t in enumerate(titles):
            draw.text((2 + i * col, 1), (f"{label} " if i == 0 else "") + t[:18], fill=0)
        pad = np.full((grid.shape[0], width - grid.shape[1]), 255, np.uint8)
        canvas += [np.asarray(head), np.concatenate([grid, pad], axis=1)]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(canvas, axis=0)).save(buf, format="PNG")
    from mrsr.files import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return path


def report(
    sweep: str | Path | list[str | Path], out: str | Path | None = None, figure: bool = True
) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv`` (and ``figure.png``) for the sweep (or several sweep
    folders, e.g. one per scale, in one table) into ``out`` (default: the first sweep folder)."""
    sweeps = [Path(x) for x in (sweep if isinstance(sweep, list) else [sweep])]
    runs = [r for x in sweeps for r in collect(x)]
    rows = table_rows(runs)
    out = Path(out or sweeps[0])
    written = {"table.md": out / "table.md", "table.csv": out / "table.csv"}
    atomic_write_text(written["table.md"], to_markdown(rows))
    roots = [x.resolve() for x in sweeps]

    def portable(path: str) -> str:  # paths inside their sweep
        root = next((r for r in roots if Path(path).resolve().is_relative_to(r)), roots[0])
        return _relative(path, root)

    relative = [{**r, "run": portable(r["run"])} for r in rows]
    atomic_write_text(written["table.csv"], to_csv(relative))
    if figure:
        try:
            fig = make_figure(runs, rows, out / "figure.png")
        except Exception as err:  # noqa: BLE001 - the tables are the main product
            print(
                f"mrsr.report: figure skipped ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]})",
                file=sys.stderr,
            )
            fig = None
        if fig is not None:
            written["figure.png"] = fig
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mrsr.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "sweep", nargs="+", help="multirun sweep folder(s) (or any folders with finished runs)"
    )
    parser.add_argument(
        "--out", help="where to write table.md, table.csv, figure.png (default: the sweep folder)"
    )
    parser.add_argument("--no-figure", action="store_true", help="only the tables")
    args = parser.parse_args(argv)
    try:
        written = report(list(args.sweep), args.out, figure=not args.no_figure)
    except ReportError as err:
        print(f"mrsr.report: {err}", file=sys.stderr)
        return 2
    print(Path(written["table.md"]).read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0
