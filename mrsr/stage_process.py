"""A stage run as users run it, ``python -m mrsr.run ...``, in a child process: for experiments
that time the whole command or resume a series of runs where an interrupted one stopped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def run_stage(
    overrides: Sequence[str],
    run_dir: str | Path,
    *,
    extra: Sequence[str] = (),
    skip_if: Path | None = None,
    env: Mapping[str, str] | None = None,
    logger: logging.Logger | None = None,
    **popen: Any,
) -> float:
    """``python -m mrsr.run <overrides> hydra.run.dir=<run_dir> <extra>``; its wall seconds.

    ``skip_if``: a path whose existence means the run is done (nothing is run). ``env``:
    variables set on top of this process's (e.g. ``OMP_NUM_THREADS``). ``logger``: the command
    line is logged at INFO first. ``popen``: passed to :func:`subprocess.run` (``cwd``,
    ``stdout``, ``capture_output``, ...). A failed run raises
    :class:`subprocess.CalledProcessError`."""
    t0 = time.perf_counter()
    if skip_if is None or not skip_if.exists():
        cmd = [sys.executable, "-m", "mrsr.run", *overrides, f"hydra.run.dir={run_dir}", *extra]
        if logger is not None:
            logger.info("running %s", " ".join(cmd))
        full_env = {**os.environ, **env} if env is not None else None
        subprocess.run(cmd, check=True, env=full_env, **popen)
    return time.perf_counter() - t0
