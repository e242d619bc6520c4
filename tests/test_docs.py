"""The README stays short, no relative link in the README or the documentation is dangling, the
generated reference tables (``docs/hooks.py``) cover the configs, and one ``mkdocs build --strict``
(about 2 s) puts every record's images into the site next to the pages that show them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mrsr_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Link and image targets of a markdown text that point at files (no URLs, no bare
    anchors), outside fenced code blocks, without their ``#anchor``."""
    targets = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0].split("?", 1)[0])
    return targets


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"


def test_link_parser() -> None:
    text = "[a](x.md#y) ![i](img/p.png) [u](https://e.org/z.md) [h](#top)\n```\n[c](no.md)\n```\n"
    assert relative_links(text) == ["x.md", "img/p.png"]


def _site_images() -> set[str]:
    """Where the hook puts the record images, as paths under ``docs/``."""
    return {os.path.normpath(DOCS / uri) for uri in _hooks().record_images()}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    images = _site_images()
    missing = [
        t
        for t in relative_links(page.read_text())
        if not (page.parent / t).exists() and os.path.normpath(page.parent / t) not in images
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_loss_table_lists_every_preset() -> None:
    table = _hooks().loss_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]
    presets = {
        p.stem for p in (ROOT / "conf" / "loss").glob("*.yaml") if not p.stem.startswith("_")
    }
    assert presets and listed == presets
    assert len(rows) == len(presets)


def test_every_generated_marker_renders() -> None:
    hooks = _hooks()
    for page in DOCS.rglob("*.md"):
        text = page.read_text()
        out = hooks.render(text)
        assert hooks.MARKER.search(out) is None, page
        if hooks.MARKER.search(text):
            assert "|---|" in out, page


def test_comment_prose_keeps_placeholders() -> None:
    """``<stage>`` in a YAML comment is text, not an HTML tag; code spans stay as written."""
    hooks = _hooks()
    assert hooks._prose("outputs/<stage>/<date_time> `a <b>`") == (
        "outputs/&lt;stage>/&lt;date_time> `a <b>`"
    )
    rendered = hooks.render("<!-- generated: config-group hydra -->")
    assert "outputs/&lt;stage>/&lt;date_time>" in rendered
    assert "outputs//" not in rendered


def test_record_images_map_into_the_site(tmp_path: Path) -> None:
    records = tmp_path / "records"
    (records / "2026-01-01-x" / "sub").mkdir(parents=True)
    for name in ("figure.png", "sub/b.png", "table.md"):
        (records / "2026-01-01-x" / name).write_text("x")
    images = _hooks().record_images(records)
    assert images == {
        "results/records/2026-01-01-x/figure.png": records / "2026-01-01-x" / "figure.png",
        "results/records/2026-01-01-x/sub/b.png": records / "2026-01-01-x" / "sub" / "b.png",
    }


def test_site_builds_strict_with_record_figures(tmp_path: Path) -> None:
    """The site builds with ``--strict``; every record image is in it, next to the record's page,
    which shows it; the configuration reference keeps its ``<...>`` placeholders."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    shown = 0
    for folder in sorted((ROOT / "records").iterdir()):
        record = folder / "record.json"
        if not record.is_file():
            continue
        images = [f for f in json.loads(record.read_text()).get("files", []) if f.endswith(".png")]
        html = (site / "results" / "records" / folder.name / "index.html").read_text()
        for name in images:
            built = site / "results" / "records" / folder.name / name
            assert built.read_bytes() == (folder / name).read_bytes(), built
            assert f'src="{name}"' in html, (folder.name, name)
            shown += 1
    assert shown >= 1
    config = (site / "reference" / "config" / "index.html").read_text()
    assert "outputs/&lt;stage&gt;/&lt;date_time&gt;" in config


def test_citation_file_matches_the_package() -> None:
    """``CITATION.cff`` has the CFF 1.2.0 keys, the package's version and license, and cites the
    paper; the software BibTeX of the overview page carries the same version."""
    tomllib = pytest.importorskip("tomllib")
    yaml = pytest.importorskip("yaml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"message", "title", "authors"} <= cff.keys()
    assert cff["version"] == project["version"]
    assert cff["license"] == project["license"]["text"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2022
    assert paper["volume"] == 172
    assert [a["family-names"] for a in paper["authors"]] == ["Mahapatra", "Ge"]
    assert paper["title"] in (ROOT / "README.md").read_text().replace("\n", " ").replace("*", "")
    assert f"version = {{{project['version']}}}" in (DOCS / "index.md").read_text()
