"""Committed results are records, and the documentation's figures are rendered from them."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from mrsr.report.records import RecordError, load_record, load_records, render_table, write_record

ROOT = Path(__file__).resolve().parents[1]


def _renderer():
    spec = importlib.util.spec_from_file_location(
        "render_records", ROOT / "experiments" / "render_records.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_committed_record_is_complete() -> None:
    records = load_records(ROOT / "records")
    assert len(records) >= 15
    for r in records:
        assert r["title"] and r["protocol"] and r["metrics"], r["slug"]
        assert r["commit"] is None or len(r["commit"]) == 40
        assert "/tmp/" not in json.dumps(r), r["slug"]  # no paths of the machine that made it


def test_readme_table_and_results_pages_equal_their_records() -> None:
    """The README's one table is its record's table; every docs page is up to date."""
    render = _renderer()
    wanted = render.outputs(ROOT)
    stale = [
        p.relative_to(ROOT).as_posix()
        for p, text in wanted.items()
        if not p.is_file() or p.read_text() != text
    ]
    assert not stale, f"run python experiments/render_records.py: {stale}"
    readme = (ROOT / "README.md").read_text()
    slugs = render.MARKED.findall(readme)
    assert len(slugs) == 1  # the README's one table
    record = load_record(ROOT / "records" / slugs[0][1])
    assert render_table(record) in readme


def test_write_record_keeps_provenance_and_refuses_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "2026-01-01-example"
    path = write_record(
        folder,
        title="t",
        protocol="p",
        metrics={"psnr": 30.0},
        device="cpu",
        table={"columns": ["a", "b"], "rows": [[1, 2]]},
        argv=["x.py", "--flag"],
        note="one seed",
    )
    rec = load_record(folder)
    assert path.name == "record.json" and rec["metrics"] == {"psnr": 30.0}
    assert rec["note"] == "one seed"
    assert rec["command"] == "python x.py --flag" and rec["package_version"]
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in render_table(rec)
    with pytest.raises(RecordError, match="names files that are not there: figure.png"):
        write_record(folder, title="t", protocol="p", metrics={}, files=["figure.png"])
    with pytest.raises(RecordError, match="one cell per column"):
        write_record(
            folder, title="t", protocol="p", metrics={}, table={"columns": ["a"], "rows": [[1, 2]]}
        )
    bad = tmp_path / "results"
    bad.mkdir()
    (bad / "record.json").write_text((folder / "record.json").read_text())
    with pytest.raises(RecordError, match="named <yyyy-mm-dd>-<slug>"):
        load_record(bad)


def test_the_decisive_runner_writes_a_record_with_its_headline_table(
    tmp_path: Path, monkeypatch
) -> None:
    """From a committed run's figures: the same table, the verdict in the caption, table.md."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    decisive = importlib.import_module("decisive")
    committed = load_record(ROOT / "records" / "2026-12-03-decisive-x4-cpu")
    run = {
        **committed["metrics"],
        "args": committed["config"],
        "device": committed["device"],
        "commit": committed["commit"],
        "command": committed["command"],
    }
    folder = tmp_path / "2026-01-01-decisive-x4-cpu"
    decisive.write_records(folder, run, per_slice={})
    rec = load_record(folder)
    assert rec["table"] == committed["table"] and "Verdict x4: not shown" in rec["table"]["caption"]
    assert rec["files"] == ["per_slice.json", "table.md"] and rec["config"] == committed["config"]
    assert (folder / "table.md").read_text().startswith("# Decisive experiment")
