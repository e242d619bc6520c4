"""Writing files safely: atomically (a temporary beside the target, then a rename), into folders
checked to be writable, with stale temporaries of interrupted writes removed."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
