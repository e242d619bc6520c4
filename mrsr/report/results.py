"""A run's results rows: printed with rich, written as CSV and JSON (atomically) in the run
folder; the device a timing was taken on."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mrsr.files import atomic_write_text

if TYPE_CHECKING:
    import torch


def write_results(
    out_dir: str | Path, rows: Sequence[dict], name: str = "results"
) -> tuple[Path, Path]:
    """Write ``rows`` as ``<name>.csv`` and ``<name>.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps(list(rows), indent=2) + "\n")
    return csv_path, json_path


def print_table(rows: Sequence[dict], title: str) -> None:
    """Print the headline metrics (slice means, and volume means of PSNR/SSIM/NMSE) as a rich
    table; HFEN and the foreground-masked PSNR/SSIM where the rows have them."""
    from rich.console import Console
    from rich.table import Table

    extra = [
        (k, label, d)
        for k, label, d in (
            ("hfen", "HFEN", 4),
            ("psnr_fg", "PSNR-fg", 2),
            ("ssim_fg", "SSIM-fg", 4),
        )
        if all(k in r for r in rows)
    ]
    table = Table(title=title)
    cols = (
        "method",
        "PSNR",
        "SSIM",
        "NMSE",
        *(label for _, label, _ in extra),
        "PSNR (vol)",
        "SSIM (vol)",
        "NMSE (vol)",
    )
    for col in cols:
        table.add_column(col, justify="right" if col != "method" else "left")
    for r in rows:
        table.add_row(
            str(r["method"]),
            f"{r['psnr']:.2f}",
            f"{r['ssim']:.4f}",
            f"{r['nmse']:.4f}",
            *(f"{r[k]:.{d}f}" for k, _, d in extra),
            f"{r['psnr_vol']:.2f} ± {r['psnr_vol_std']:.2f}",
            f"{r['ssim_vol']:.4f} ± {r['ssim_vol_std']:.4f}",
            f"{r['nmse_vol']:.4f} ± {r['nmse_vol_std']:.4f}",
        )
    Console(width=max(120, Console().width)).print(table)


def device_label(device: torch.device) -> str:
    """``cuda (<GPU model>)`` or ``cpu (<n> threads)``: where a timing was taken."""
    import torch  # here, so that reading and writing results does not load torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
