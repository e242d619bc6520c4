"""Committed results as records: one folder ``records/<date>-<slug>/`` per result.

``record.json`` says what was run and what it measured::

    {"schema": 1, "title": ..., "date": "2026-12-03", "protocol": "how it was measured",
     "command": ..., "package_version": ..., "commit": ..., "config": {...},
     "machine": ..., "device": ..., "metrics": {...}, "files": [...],
     "table": {"caption": ..., "columns": [...], "rows": [[...], ...]}}

``table`` (optional) is the record's headline table; :func:`render_table` turns it into
Markdown, and the documentation's results pages and the README's table are rendered from
records only (``experiments/render_records.py``). Fields a record cannot know (results
measured before records existed) are ``null``, never guessed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mrsr
from mrsr.files import atomic_write_text

SCHEMA = 1
RECORD = "record.json"
REQUIRED = (
    "schema",
    "title",
    "date",
    "protocol",
    "command",
    "package_version",
    "commit",
    "config",
    "machine",
    "device",
    "metrics",
    "files",
)
SLUG = re.compile(r"\d{4}-\d{2}-\d{2}-[a-z0-9]+(-[a-z0-9]+)*")


class RecordError(ValueError):
    """A record folder that is not a valid record (one line: the file and the problem)."""


def git_commit(where: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the checkout the package runs from, and whether tracked files differ from
    it; ``(None, None)`` outside a git checkout."""
    where = where or Path(mrsr.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=where, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    return commit, bool(git("status", "--porcelain", "--untracked-files=no"))


def machine() -> str:
    """The kind of machine (OS, architecture, CPU count), not its host name."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that made the record, with the script path relative to the working
    folder."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        script = Path(argv[0])
        if script.is_absolute():
            try:
                argv[0] = script.relative_to(Path.cwd()).as_posix()
            except ValueError:
                argv[0] = script.name
        argv[0] = f"python {argv[0]}" if argv[0].endswith(".py") else argv[0]
    return " ".join(argv)


def write_record(
    folder: str | Path,
    *,
    title: str,
    protocol: str,
    metrics: dict[str, Any],
    config: dict[str, Any] | None = None,
    device: str | None = None,
    files: Iterable[str] = (),
    table: dict[str, Any] | None = None,
    date: str | None = None,
    argv: Sequence[str] | None = None,
    note: str | None = None,
) -> Path:
    """Write ``<folder>/record.json`` with the provenance of this process (command, package
    version, commit, machine) and return its path."""
    folder = Path(folder)
    commit, dirty = git_commit()
    record = {
        "schema": SCHEMA,
        "title": title,
        "date": date or dt.date.today().isoformat(),
        "protocol": protocol,
        "command": command(argv),
        "package_version": mrsr.__version__,
        "commit": commit,
        "dirty": dirty,
        "config": config,
        "machine": machine(),
        "device": device,
        "metrics": metrics,
        "files": sorted(files),
    }
    if table is not None:
        record["table"] = table
    if note:
        record["note"] = note  # shown in italics on the record's page
    check(record, folder)
    path = folder / RECORD
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=True) + "\n")
    return path


def check(record: dict[str, Any], folder: Path) -> None:
    """Refuse a record without the fields every record has, or naming files it lacks."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{folder / RECORD}: missing {', '.join(missing)}")
    if record["schema"] != SCHEMA:
        raise RecordError(
            f"{folder / RECORD}: schema {record['schema']!r} (this package reads {SCHEMA})"
        )
    if folder.is_dir():
        absent = [f for f in record["files"] if not (folder / f).is_file()]
        if absent:
            raise RecordError(
                f"{folder / RECORD}: names files that are not there: {', '.join(absent)}"
            )
    table = record.get("table")
    if table is not None:
        width = len(table.get("columns") or [])
        if not width or any(len(row) != width for row in table.get("rows") or []):
            raise RecordError(f"{folder / RECORD}: table rows must have one cell per column")


def load_record(folder: str | Path) -> dict[str, Any]:
    """The checked ``record.json`` of ``folder``, with its ``slug`` (the folder name)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError) as err:
        raise RecordError(f"{folder / RECORD}: unreadable ({type(err).__name__})") from None
    if not SLUG.fullmatch(folder.name):
        raise RecordError(
            f"{folder}: a record folder is named <yyyy-mm-dd>-<slug> (lower case, dashes)"
        )
    check(record, folder)
    return {**record, "slug": folder.name}


def load_records(root: str | Path) -> list[dict[str, Any]]:
    """Every record below ``root`` (one level), newest first."""
    folders = [p for p in Path(root).iterdir() if p.is_dir() and (p / RECORD).is_file()]
    return sorted((load_record(p) for p in folders), key=lambda r: r["slug"], reverse=True)


def render_table(record: dict[str, Any]) -> str:
    """The record's headline table as Markdown, with its caption and where it comes from."""
    table = record.get("table")
    if not table:
        return ""
    lines = [
        "| " + " | ".join(map(str, table["columns"])) + " |",
        "|" + "---|" * len(table["columns"]),
    ]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table["rows"]]
    caption = table.get("caption")
    source = f"Record `records/{record['slug']}/`"
    return "\n".join(([caption, ""] if caption else []) + lines + ["", source])
