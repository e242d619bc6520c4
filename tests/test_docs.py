"""The README stays short, no relative link in the README or the documentation is dangling, and
the generated reference tables (``docs/hooks.py``) cover the configs. No mkdocs build here:
``make docs`` builds the site with ``--strict``."""

from __future__ import annotations

import importlib.util
import re
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


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
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
