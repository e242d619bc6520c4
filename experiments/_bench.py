"""Helpers shared by the experiments: the device's name, the load average, timing and FLOP
counting of a network, and where results are written (records)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mrsr.files import atomic_write_text
from mrsr.report.records import RECORD, write_record


def device_name(device: torch.device) -> str:
    """GPU model, or CPU model with the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


def write_result(
    path: str | Path, result: dict[str, Any], config: dict[str, Any] | None = None
) -> Path:
    """Write an experiment's figures and say where: into a record when ``path`` is a folder
    (``records/<date>-<slug>``: ``record.json`` with the command, package version, commit,
    machine and device; the calling script's docstring is its title and protocol; files already
    in the folder are listed), as plain JSON when it ends in ``.json`` (caches, scratch)."""
    path = Path(path)
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    else:
        doc = (sys.modules["__main__"].__doc__ or "").strip()
        files = (
            [f.name for f in path.glob("*") if f.is_file() and f.name != RECORD]
            if path.is_dir()
            else []
        )
        device = result.get("device") or result.get("cpu") or device_name(torch.device("cpu"))
        path = write_record(
            path,
            title=doc.splitlines()[0] if doc else path.name,
            protocol=doc,
            metrics=result,
            config=config,
            device=str(device),
            files=files,
        )
    print(f"wrote {path}")
    return path


def load_avg() -> float | None:
    """The 1-minute load average (None where the system has none): a busy machine inflates
    every time."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def record_folder(slug: str) -> Path:
    """The default output of an experiment: ``records/<today>-<slug>`` of this checkout."""
    return Path(__file__).resolve().parents[1] / "records" / f"{dt.date.today().isoformat()}-{slug}"


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to ``precision`` (``bf16``, ``fp16``; anything else: none)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def flops_per_image(net: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``net`` on the first image of ``x``."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x[:1])
    return int(counter.get_total_flops())
