"""mkdocs hook: reference tables generated from the Hydra configs under ``conf/``.

A page line ``<!-- generated: NAME -->`` (or ``<!-- generated: config-group GROUP -->``) is
replaced by a table built from the YAML files, so the configs are never typed twice:

- ``config-groups``: every config group, its default and its options;
- ``config-top``: the top-level keys of ``conf/config.yaml``;
- ``config-group GROUP``: the keys each option of GROUP sets, with values and inline comments;
- ``loss-presets``: ``conf/loss/*.yaml``, each composed and its terms built, as a run builds
  them (every term in words: weight, symbol, options);
- ``loss-terms``: ``conf/loss_term/*.yaml``, the terms presets are made of (class and options);
- ``networks``: ``conf/model/*.yaml`` with ``_target_`` and their size keys.

Values are read with yaml; descriptions are the ``#`` comments of the raw text (a key's inline
comment and its continuation lines, else the comment block just above the key). Their prose is
markdown with ``<`` escaped outside code spans, so ``outputs/<stage>`` is not taken for HTML.

The hook also puts every record's images (``records/<slug>/**/*.png``) into the site at
``results/records/<slug>/...``, next to the record's page, so pages show them without a second
copy under ``docs/``: a record page links ``<slug>/figure.png``, a results page
``records/<slug>/figure.png``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
RECORDS = ROOT / "records"
# where the record pages live under docs/, and so where their images go in the site
RECORD_PAGES = "results/records"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
MARKER = re.compile(r"^<!-- generated: ([\w-]+)(?: ([\w/-]+))? -->$", re.MULTILINE)
KEY_LINE = re.compile(r"^(\s*)([\w@/.-]+):(?:\s|$)(.*)$")
NOT_SIZE = {"_target_", "scale", "name", "label", "order", "defaults"}


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _prose(text: str) -> str:
    """A comment's prose as markdown: ``<`` outside code spans escaped (``<stage>`` is a
    placeholder, not an HTML tag); code spans are kept as they are."""
    out, pos = [], 0
    for match in CODE_SPAN.finditer(text):
        out += [text[pos : match.start()].replace("<", "&lt;"), match.group(0)]
        pos = match.end()
    out.append(text[pos:].replace("<", "&lt;"))
    return "".join(out)


def _text(text: str) -> str:
    """Comment prose safe inside a markdown table cell."""
    return _cell(_prose(text))


def _value(value: Any) -> str:
    """A YAML value as it is written on the command line (flow style), in code font."""
    if isinstance(value, str):
        text = value
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        text = text.removesuffix("\n...").strip()
    return f"`{_cell(text)}`"


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes is not a comment."""
    quote = ""
    for i, ch in enumerate(rest):
        if ch in "\"'" and (not quote or quote == ch):
            quote = "" if quote else ch
        elif ch == "#" and not quote and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def parse_comments(text: str) -> tuple[list[str], dict[str, str]]:
    """The file's leading comment lines and, for each dotted key path, its description."""
    header: list[str] = []
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    last: tuple[str, int] | None = None  # key path with an inline comment, its comment column
    seen_key = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending, last = [], None
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body.startswith("@package"):
                continue
            if last is not None and indent >= last[1]:
                comments[last[0]] += " " + body
            elif not seen_key:
                header.append(stripped[1:].removeprefix(" ").rstrip())
            else:
                pending.append(body)
            continue
        match = KEY_LINE.match(line)
        if stripped.startswith("-") or match is None:
            pending, last = [], None
            continue
        seen_key = True
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = ".".join(key for _, key in stack)
        _, comment = _split_comment(match.group(3))
        if comment:
            comments[path] = comment
            last = (path, line.index("#", len(match.group(1)) + len(match.group(2))))
        else:
            if pending:
                comments[path] = " ".join(pending)
            last = None
        pending = []
    return header, comments


def _is_command(line: str) -> bool:
    return line.startswith("  ") or line.startswith("python ")


def _first_sentence(lines: list[str]) -> str:
    """The first sentence of a comment's prose (command lines left out)."""
    text = " ".join(line.strip() for line in lines if not _is_command(line))
    match = re.match(r"(.+?)\.(\s|$)", text)
    return match.group(1) if match else text


def _header_markdown(lines: list[str]) -> str:
    """A leading comment as markdown: prose as a paragraph, command lines as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    for line in lines:
        if _is_command(line) or (code and code[-1].endswith("\\")):
            if prose:
                out.append(" ".join(prose))
                prose = []
            continued = bool(code) and code[-1].endswith("\\")
            code.append(("    " if continued else "") + line.strip())
        else:
            if code:
                out.append("```bash\n" + "\n".join(code) + "\n```")
                code = []
            prose.append(_prose(line.strip()))
    if prose:
        out.append(" ".join(prose))
    if code:
        out.append("```bash\n" + "\n".join(code) + "\n```")
    return "\n\n".join(out)


class Option:
    """One option of a config group: ``conf/<group>/<name>.yaml``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = path.read_text()
        self.data: dict[str, Any] = yaml.safe_load(raw) or {}
        self.header, self.comments = parse_comments(raw)

    @property
    def name(self) -> str:
        return str(self.data.get("name", self.path.stem))

    @property
    def label(self) -> str:
        """The file's own ``label:``, else the first sentence of its leading comment."""
        if "label" in self.data:
            return str(self.data["label"])
        return _first_sentence(self.header)

    def parents(self) -> list[str]:
        """Options of the same group this one extends (the file names of its defaults list;
        entries of other groups, ``_self_`` and external configs are left out)."""
        entries = self.data.get("defaults", [])
        return [
            e for e in entries if isinstance(e, str) and self.path.with_name(f"{e}.yaml").exists()
        ]


def options(group: str, conf: Path = CONF, hidden: bool = False) -> list[Option]:
    """The options of a group; ``_``-prefixed files (shared bases, not selectable) only when
    ``hidden``, and then first."""
    paths = sorted(
        (conf / group).glob("*.yaml"), key=lambda p: (not p.stem.startswith("_"), p.stem)
    )
    return [Option(p) for p in paths if hidden or not p.stem.startswith("_")]


def resolved(option: Option) -> dict[str, Any]:
    """The option's values after its defaults list (same group; own values win)."""
    merged: dict[str, Any] = {}
    for parent in option.parents():
        merged |= resolved(Option(option.path.with_name(f"{parent}.yaml")))
    return merged | {k: v for k, v in option.data.items() if k not in ("defaults", "label")}


def _leaves(data: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, data)]


def _defaults(conf: Path) -> dict[str, tuple[str, str]]:
    """``conf/config.yaml``'s defaults list: group -> (default option, its comment: inline with
    continuation lines, else the comment block above the entry)."""
    out: dict[str, tuple[str, str]] = {}
    last, block = "", list[str]()
    for line in (conf / "config.yaml").read_text().splitlines():
        match = re.match(r"^\s+- ([\w/]+): (\w+)\s*(?:#\s*(.*))?$", line)
        comment = line.strip().lstrip("#").strip()
        if match:
            last = match.group(1) if match.group(3) else ""
            out[match.group(1)] = (match.group(2), match.group(3) or " ".join(block))
            block = []
        elif last and re.match(r"^\s{10,}#", line):
            default, text = out[last]
            out[last] = (default, f"{text} {comment}")
        elif re.match(r"^\s+#", line):
            last, block = "", [*block, comment]
        else:
            last, block = "", []
    return out


def _groups(conf: Path) -> list[str]:
    dirs = {p.parent for p in conf.rglob("*.yaml") if p.parent != conf}
    return sorted(str(d.relative_to(conf)) for d in dirs)


def config_groups_table(conf: Path = CONF) -> str:
    defaults = _defaults(conf)
    rows = ["| group | default | options | what |", "|---|---|---|---|"]
    for group in _groups(conf):
        group_options = options(group, conf)
        default, comment = defaults.get(group, ("", ""))
        names = ", ".join(f"`{o.name}`" for o in group_options)
        first = next((o for o in group_options if o.path.stem == default), group_options[0])
        what = comment or _first_sentence(first.header)
        shown = f"`{default}`" if default else "—"
        rows.append(f"| `{group}` | {shown} | {names} | {_text(what)} |")
    return "\n".join(rows)


def config_top_table(conf: Path = CONF) -> str:
    """The top-level keys of ``conf/config.yaml`` (everything but its defaults list)."""
    top = Option(conf / "config.yaml")
    rows = ["| key | value | description |", "|---|---|---|"]
    for key, value in top.data.items():
        if key != "defaults":
            rows.append(f"| `{key}` | {_value(value)} | {_text(top.comments.get(key, ''))} |")
    return "\n".join(rows)


def _package(group: str, option: Option) -> str:
    raw = option.path.read_text()
    return "" if "@package _global_" in raw else group.replace("/", ".")


def config_group_keys(group: str, conf: Path = CONF) -> str:
    """For each option of ``group``: its description, what it extends, and its keys."""
    parts: list[str] = []
    for option in options(group, conf, hidden=True):
        parent_comments: dict[str, str] = {}
        for parent in option.parents():
            parent_comments |= Option(option.path.with_name(f"{parent}.yaml")).comments
        package = _package(group, option)
        hidden = option.path.stem.startswith("_")
        title = (
            f"`{option.path.stem}` (shared base, not an option)"
            if hidden
            else f"`{group}={option.name}`"
        )
        parts.append(f"#### {title}\n")
        if option.header:
            parts.append(_header_markdown(option.header) + "\n")
        extends = [e for e in option.data.get("defaults", []) if e != "_self_"]
        if extends:
            shown = ", ".join(_value(e) for e in extends)
            parts.append(f"Defaults list: {shown}; the keys below are set on top.\n")
        leaves = [
            (key, value)
            for key, value in _leaves(option.data, "")
            if key and key.split(".")[0] != "defaults"
        ]
        if not leaves:
            parts.append("Sets no keys.\n")
            continue
        rows = ["| key | value | description |", "|---|---|---|"]
        for key, value in leaves:
            comment = option.comments.get(key) or parent_comments.get(key, "")
            full = f"{package}.{key}" if package else key
            rows.append(f"| `{full}` | {_value(value)} | {_text(comment)} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def loss_table(conf: Path = CONF) -> str:
    """One row per ``conf/loss/*.yaml``: the preset composed as a run composes it and its terms
    built by the objective's own builder (:func:`mrsr.losses.objective.build_terms`), in the
    order the objective sums them."""
    from omegaconf import OmegaConf

    from mrsr.config import compose_option
    from mrsr.losses.objective import build_terms

    default = _defaults(conf).get("loss", ("", ""))[0]
    rows = ["| preset | label | terms (weight, term, options) |", "|---|---|---|"]
    for option in options("loss", conf):
        loss = OmegaConf.to_container(compose_option("loss", option.name), resolve=True)
        terms = " + ".join(t.describe() for t in build_terms(loss).values())  # type: ignore[arg-type]
        name = f"`{option.name}`" + (" (default)" if option.path.stem == default else "")
        rows.append(f"| {name} | {_text(str(loss['label']))} | {_cell(terms)} |")  # type: ignore[index]
    return "\n".join(rows)


def loss_terms_table(conf: Path = CONF) -> str:
    """One row per ``conf/loss_term/*.yaml``: the term class (its docstring's first sentence)
    and the options the file sets."""
    from hydra.utils import get_class

    rows = ["| term config | class | what it is | options |", "|---|---|---|---|"]
    for option in options("loss_term", conf):
        data = resolved(option)
        cls = get_class(data["_target_"])
        what = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".").replace("``", "`")
        keys = ", ".join(f"{k}={_value(v).strip('`')}" for k, v in data.items() if k != "_target_")
        rows.append(f"| `{option.name}` | `{cls.__name__}` | {_text(what)} | {_cell(keys)} |")
    return "\n".join(rows)


def networks_table(conf: Path = CONF) -> str:
    """One row per ``conf/model/*.yaml``: label, ``_target_`` and the size keys."""
    rows = ["| `model=` | label | `_target_` | size keys |", "|---|---|---|---|"]
    for option in options("model", conf):
        net = resolved(option)
        sizes = ", ".join(
            f"{key}={_value(value).strip('`')}" for key, value in net.items() if key not in NOT_SIZE
        )
        rows.append(
            f"| `{option.name}` | {_text(option.label)} | `{net.get('_target_', '')}` | "
            f"{_cell(sizes)} |"
        )
    return "\n".join(rows)


TABLES: dict[str, Callable[[Path], str]] = {
    "config-groups": config_groups_table,
    "config-top": config_top_table,
    "loss-presets": loss_table,
    "loss-terms": loss_terms_table,
    "networks": networks_table,
}


def render(markdown: str, conf: Path = CONF) -> str:
    """Replace every generated-table marker of a page."""

    def replace(match: re.Match[str]) -> str:
        name, arg = match.group(1), match.group(2)
        if name == "config-group" and arg:
            return config_group_keys(arg, conf)
        if name in TABLES and not arg:
            return TABLES[name](conf)
        raise ValueError(f"unknown generated table: {match.group(0)}")

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs event: called with each page's markdown before it is rendered."""
    return render(markdown)


def record_images(records: Path = RECORDS) -> dict[str, Path]:
    """Every record image as (its path in the site, relative to the site root) -> its file:
    ``records/<slug>/<name>.png`` -> ``results/records/<slug>/<name>.png``."""
    images: dict[str, Path] = {}
    if not records.is_dir():
        return images
    for path in sorted(records.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            images[f"{RECORD_PAGES}/{path.relative_to(records).as_posix()}"] = path
    return images


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    """mkdocs event: add the records' images to the site (see the module docstring)."""
    from mkdocs.structure.files import File

    for uri, path in record_images().items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_serve(server: Any, config: Any, builder: Any, **kwargs: Any) -> Any:
    """mkdocs event: ``mkdocs serve`` rebuilds when a record changes."""
    server.watch(str(RECORDS))
    return server
