"""Command line: ``python -m mrsr.run stage=<vit|disent|sr|eval|predict|pipeline> ...``.

A thin ``@hydra.main`` over :func:`mrsr.tasks.run_task`; expected errors are printed on
one line (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_PACKAGE = "mrsr.conf"


def conf_dir() -> Path:
    return Path(str(resources.files(CONF_PACKAGE)))


def group_options(group: str) -> list[str]:
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_choices(argv: list[str]) -> str | None:
    """One-line message for ``group=option`` arguments naming an option that does not exist."""
    for arg in argv:
        if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.removeprefix("override ")
        options = group_options(key) if "." not in key and key not in ("hydra",) else []
        if not options or value in ("null", ""):
            continue
        for choice in value.split(","):
            if choice not in options:
                return f"mrsr: unknown {key} {choice!r} (choose from: {', '.join(options)})"
    return None


@hydra.main(version_base="1.3", config_path="pkg://mrsr.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mrsr.tasks import run_task

    try:
        return run_task(cfg)
    except Exception as err:
        # An expected error wrapped by Hydra's instantiate (e.g. a bad scale for a model).
        cause = user_error(err)
        if cause is None:
            raise
        print(f"mrsr: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def user_error(err: BaseException) -> BaseException | None:
    """The :class:`~mrsr.errors.MrsrError` in ``err``'s chain of causes, if any."""
    from mrsr.errors import MrsrError

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MrsrError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def null_groups_to_deletions(argv: list[str]) -> list[str]:
    """``logger=null`` (or any config group set to null) means: drop that group (``~logger``)."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        out.append(f"~{key}" if value == "null" and group_options(key) else arg)
    return out


def main() -> None:
    sys.argv[1:] = null_groups_to_deletions(sys.argv[1:])
    problem = check_group_choices(sys.argv[1:])
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
