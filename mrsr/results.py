"""Result tables: printed with rich, written as CSV and JSON (atomically) in the run folder."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METRIC_COLUMNS = (
    "psnr",
    "ssim",
    "nmse",
    "psnr_vol",
    "ssim_vol",
    "nmse_vol",
    "psnr_vol_std",
    "ssim_vol_std",
    "nmse_vol_std",
)


def atomic_write(path: Path, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, give it the usual
    permissions (``0666 & ~umask``; a temporary file starts private), rename it into place
    and fsync the folder: a reader sees the old file or the whole new one, never a part.
    ``suffix`` ends the temporary name (writers that choose a format by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable(folder: Path, key: str) -> None:
    """Refuse, in one line that starts with ``key`` (the setting, e.g. ``output``), a folder
    this process cannot write in, before any work: a temporary file is created and removed in
    ``folder``, or in the nearest existing folder above it (where it would be created)."""
    from mrsr.errors import ConfigError

    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {probe} is not a folder, so {folder} cannot be written")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mrsr-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot write in {probe} ({err.strerror or err}): choose a folder you can "
            "write in, or make it writable"
        ) from None


def remove_stale_temporaries(path: Path, idle: float = 60.0) -> list[Path]:
    """Remove what an :func:`atomic_write` of ``path`` killed before its rename left behind
    (``.<name>.*.tmp*`` beside it, unmodified for ``idle`` seconds: a write in progress
    elsewhere keeps touching its file); returns the removed files."""
    import time

    now = time.time()
    stale = []
    for tmp in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp*")):
        try:
            if now - tmp.stat().st_mtime >= idle:
                tmp.unlink()
                stale.append(tmp)
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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
