"""Helpers shared by the benchmarks: the device's name and the JSON result file."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from mrsr.results import atomic_write_text


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


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Write the benchmark's figures as JSON (atomically) and say where."""
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
