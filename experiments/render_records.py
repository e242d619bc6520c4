"""Render the committed records into the documentation and the README.

    python experiments/render_records.py            # write docs/results/records/ and the tables
    python experiments/render_records.py --check    # exit 1 if anything is out of date

Every folder ``records/<date>-<slug>/`` with a ``record.json`` gets a page
``docs/results/records/<date>-<slug>.md`` (provenance, protocol, its table, its figures, its
files, its metrics) and a line in ``docs/results/records/index.md``. A Markdown file (README.md
or a docs page) that holds the marker pair

    <!-- record-table: <date>-<slug> -->
    <!-- /record-table -->

gets that record's table between them: figures are typed once, in the record.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mrsr.report.records import load_records, render_table

ROOT = Path(__file__).resolve().parents[1]
PAGES = Path("docs/results/records")
MARKED = re.compile(
    r"(<!-- record-table: (?P<slug>[\w-]+) -->\n)(?P<body>.*?)(<!-- /record-table -->)", re.S
)
IMAGES = (".png", ".jpg", ".jpeg", ".svg")  # shown on the record's page (docs/hooks.py copies them)
INLINE_METRICS = 20_000  # characters of metrics JSON shown on a record's page; larger: see the file


def page(record: dict) -> str:
    """One record's documentation page."""
    slug = record["slug"]
    commit = record["commit"] or "not recorded"
    rows = [
        ("date", record["date"]),
        ("command", _code(record["command"])),
        ("package version", record["package_version"] or "not recorded"),
        ("commit", f"`{commit}`" + (" (with uncommitted changes)" if record.get("dirty") else "")),
        ("machine", record["machine"] or "not recorded"),
        ("device", record["device"] or "not recorded"),
    ]
    out = [
        f"# {record['title']}",
        "",
        f"Record `records/{slug}/record.json`.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    out += ["## Protocol", "", str(record["protocol"] or "not recorded"), ""]
    if record.get("note"):
        out += [f"*{record['note']}*", ""]
    if record.get("table"):
        out += ["## Table", "", render_table(record), ""]
    images = [f for f in record["files"] if Path(f).suffix.lower() in IMAGES]
    if images:
        # docs/hooks.py puts records/<slug>/<f> into the site next to this page
        out += ["## Figures", ""]
        for f in images:
            out += [f"![{f}]({slug}/{f})", "", f"`records/{slug}/{f}`", ""]
    if record["files"]:
        out += ["## Files", "", *[f"- `records/{slug}/{f}`" for f in record["files"]], ""]
    if record.get("config"):
        out += ["## Config", "", "```json", json.dumps(record["config"], indent=1), "```", ""]
    metrics = json.dumps(record["metrics"], indent=1)
    out += ["## Metrics", ""]
    out += (
        ["```json", metrics, "```"]
        if len(metrics) <= INLINE_METRICS
        else [
            f"{len(metrics):,} characters: see `records/{slug}/record.json` (keys: "
            + ", ".join(f"`{k}`" for k in record["metrics"])
            + ")."
        ]
    )
    return "\n".join(out) + "\n"


def _code(command: object) -> str:
    if not command:
        return "not recorded"
    commands = command if isinstance(command, list) else [command]
    return "<br>".join(f"`{str(c).replace('|', '¦')}`" for c in commands)


def index(records: list[dict]) -> str:
    lines = [
        "# Records",
        "",
        "Every committed result, newest first: "
        "a folder `records/<date>-<slug>/` with `record.json` "
        "(command, package version, commit, config, machine, device, metrics) "
        "and its tables and figures. "
        "These pages are rendered from the records by `python experiments/render_records.py`.",
        "",
        "| date | record | device | commit |",
        "|---|---|---|---|",
    ]
    for r in records:
        commit = f"`{r['commit'][:8]}`" if r["commit"] else "—"
        lines.append(
            f"| {r['date']} | [{r['title']}]({r['slug']}.md) | {r['device'] or '—'} | {commit} |"
        )
    return "\n".join(lines) + "\n"


def fill_tables(text: str, by_slug: dict[str, dict], where: Path) -> str:
    """``text`` with every marked table replaced by its record's table."""

    def fill(m: re.Match) -> str:
        slug = m["slug"]
        if slug not in by_slug:
            raise SystemExit(f"render_records: {where}: no record {slug!r}")
        return m[1] + render_table(by_slug[slug]) + "\n" + m[4]

    return MARKED.sub(fill, text)


def outputs(root: Path = ROOT) -> dict[Path, str]:
    """Every file this script writes, with its content."""
    records = load_records(root / "records")
    by_slug = {r["slug"]: r for r in records}
    out = {root / PAGES / "index.md": index(records)}
    out |= {root / PAGES / f"{r['slug']}.md": page(r) for r in records}
    for md in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        if PAGES.as_posix() in md.relative_to(root).as_posix():
            continue
        text = md.read_text()
        if MARKED.search(text):
            out[md] = fill_tables(text, by_slug, md.relative_to(root))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say whether anything is out of date")
    args = ap.parse_args()
    wanted = outputs()
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    # pages of removed records
    orphans = [p for p in (ROOT / PAGES).glob("*.md") if p not in wanted]
    names = [p.relative_to(ROOT).as_posix() for p in stale + orphans]
    if args.check:
        if names:
            print(
                "out of date (run python experiments/render_records.py): " + ", ".join(names),
                file=sys.stderr,
            )
            return 1
        print("records, pages and tables agree")
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    for path in orphans:
        path.unlink()
    print(f"{len(names)} file(s) written or removed" + "".join(f"\n  {n}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
