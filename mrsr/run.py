"""Command line:
``python -m mrsr.run stage=<vit|disent|sr|eval|predict|pipeline|throughplane> ...``.

A thin ``@hydra.main`` over :func:`mrsr.dispatch.run_task`; expected errors are printed on
one line (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mrsr.config import compose, group_options


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


INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (128 + 2)


def interrupted() -> None:
    """Ctrl-C: one line (also in the run's log file), exit status 130. Outputs are written to
    a temporary file and renamed when complete, so none is left half-written."""
    from mrsr.dispatch import to_log_file

    to_log_file(40, "mrsr: interrupted")  # logging.ERROR
    print("mrsr: interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED) from None


@hydra.main(version_base="1.3", config_path="pkg://mrsr.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from mrsr.dispatch import run_task

    try:
        return run_task(cfg)
    except KeyboardInterrupt:
        interrupted()
    except SystemExit as err:
        if isinstance(err.__context__, KeyboardInterrupt):  # Lightning's exit(1) after Ctrl-C
            interrupted()
        raise
    except Exception as err:
        # An expected error wrapped by Hydra's instantiate (e.g. a bad scale for a model).
        from mrsr.dispatch import to_log_file
        from mrsr.errors import user_error

        cause = user_error(err)
        if cause is None:
            raise
        to_log_file(40, f"mrsr: {cause}")  # logging.ERROR, in the run's log file too
        print(f"mrsr: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def null_groups_to_deletions(argv: list[str]) -> list[str]:
    """``logger=null`` (or any config group set to null) means: drop that group (``~logger``)."""
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        out.append(f"~{key}" if value == "null" and group_options(key) else arg)
    return out


# Hydra flags that change what the command does; with them, overrides are left to Hydra.
_HYDRA_FLAGS = (
    "-m",
    "--multirun",
    "-h",
    "--help",
    "--hydra-help",
    "-c",
    "--cfg",
    "-i",
    "--info",
    "-p",
    "--package",
    "--resolve",
    "-sc",
    "--shell-completion",
    "--version",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
)


def shell_quoted(key: str, value: str) -> str:
    """``key=value`` with the value quoted for Hydra's override grammar and the whole quoted
    for a POSIX shell: ``input="'Müller scan.nii.gz'"``; ``'input="it's.nii"'``."""
    import shlex

    single = "'" + value.replace("\\'", "\\\\'").replace("'", "\\'") + "'"
    if not set(single) & set('"$`\\!'):
        return f'{key}="{single}"'
    double = '"' + value.replace('"', '\\"') + '"'
    if "'" not in double:
        return f"'{key}={double}'"
    if not set(double) & set("$`\\!"):
        return f'{key}="{double.replace(chr(34), chr(92) + chr(34))}"'
    return shlex.quote(f"{key}={single}")


def check_quoting(argv: list[str]) -> str | None:
    """A value that Hydra's override grammar reads only in quotes (non-ASCII letters such as
    ``ü``, spaces next to brackets, ``()[]{}#'~=&``): one line with the quoted form to pass,
    instead of Hydra's lexer error."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_override(arg)
            continue
        except HydraException:
            pass
        key, value = arg.split("=", 1)
        if not value or value[0] in "'\"":
            continue
        suggestion = shell_quoted(key, value)
        try:
            ok = parser.parse_override(shlex.split(suggestion)[0]).value() == value
        except HydraException:
            ok = False
        if ok:
            return (
                f"mrsr: {arg}: Hydra reads a value with non-ASCII letters or any of ()[]{{}}#'~=& "
                f"only in quotes: pass {suggestion}"
            )
    return None


def check_value_types(base, cfg, overrides: list[str]) -> str | None:
    """An override must keep the type of the value it replaces (int, float, bool)."""
    from omegaconf import OmegaConf

    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "." not in key or key.startswith("hydra."):
            continue
        old = OmegaConf.select(base, key, throw_on_resolution_failure=False)
        new = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if old is None or new is None or isinstance(old, str):
            continue
        want = (
            "true/false"
            if isinstance(old, bool)
            else "an integer"
            if isinstance(old, int)
            else "a number"
        )
        ok = (
            isinstance(new, bool)
            if isinstance(old, bool)
            else (
                isinstance(new, int) and not isinstance(new, bool)
                if isinstance(old, int)
                else isinstance(new, int | float) and not isinstance(new, bool)
                if isinstance(old, float)
                else True
            )
        )
        if not ok:
            return f"mrsr: {key}={new!r} is invalid: expected {want}"
    return None


def check_run_dir(cfg) -> str | None:
    """Hydra creates the run folder (``hydra.run.dir``) before anything else: one that cannot
    be written is said in one line instead of Hydra's traceback."""
    from omegaconf import OmegaConf

    from mrsr.errors import ConfigError
    from mrsr.files import check_writable

    folder = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False)
    if folder is None:
        return None
    try:
        check_writable(Path(str(folder)), "hydra.run.dir (the run folder; or MRSR_OUTPUT_DIR)")
    except ConfigError as err:
        return f"mrsr: {err}"
    return None


def check_flat_loss_keys(argv: list[str]) -> str | None:
    """An override of a loss key of earlier versions (``loss.adv=0.1``) gets its new spelling."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key.startswith("loss."):
            from mrsr.losses.objective import FLAT_KEYS, flat_form

            if key.removeprefix("loss.") in FLAT_KEYS:
                return f"mrsr: {flat_form(key.removeprefix('loss.'), value)}"
    return None


def check_overrides(argv: list[str]) -> str | None:
    """Compose the config once to turn a bad override (unknown key, wrong type) into one line."""
    if any(a.split("=", 1)[0] in _HYDRA_FLAGS for a in argv):
        return None
    from hydra.core.global_hydra import GlobalHydra

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        cfg = compose(overrides, hydra=True)
        groups = [a for a in overrides if "." not in a.split("=", 1)[0]]
        if len(groups) < len(overrides):  # only dotted keys have a type to keep
            problem = check_value_types(compose(groups), cfg, overrides)
            if problem:
                return problem
        problem = check_run_dir(cfg)
        if problem:
            return problem
    except Exception as err:  # noqa: BLE001 - any composition failure is the user's override
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        key = next((line for line in lines if line.startswith("full_key:")), "")
        reason = [
            line
            for line in lines
            if not line.startswith(("full_key:", "object_type", "reference_type"))
        ]
        first = " ".join(reason[:2]) if reason else type(err).__name__
        return f"mrsr: {first}" + (f" ({key})" if key and key not in first else "")
    finally:
        GlobalHydra.instance().clear()
    return None


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:  # before the run started (composing, imports)
        print("mrsr: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def _main() -> None:
    sys.argv[1:] = null_groups_to_deletions(sys.argv[1:])
    problem = (
        check_quoting(sys.argv[1:])
        or check_group_choices(sys.argv[1:])
        or check_flat_loss_keys(sys.argv[1:])
        or check_overrides(sys.argv[1:])
    )
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
