"""User-facing errors: one line, naming the file and what is wrong."""

from __future__ import annotations

from pathlib import Path


class MrsrError(Exception):
    """An expected failure caused by the user's input or configuration.

    The command line prints ``str(err)`` on one line and exits with status 2,
    without a traceback.
    """


class DataError(MrsrError):
    """A data file or folder that cannot be used."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self):  # survives DataLoader worker processes
        return (type(self), (self.path, self.problem))


class ConfigError(MrsrError):
    """A configuration value that cannot work."""


class CheckpointError(MrsrError):
    """A checkpoint that is missing, unsafe, corrupt or from another stage."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class NumericalError(MrsrError):
    """A NaN/inf loss or gradient under the 'stop' policy."""


def user_error(err: BaseException) -> MrsrError | None:
    """The :class:`MrsrError` in ``err``'s chain of causes, if any (e.g. one that Hydra's
    ``instantiate`` wrapped); a missing mandatory config value becomes one."""
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MrsrError):
            return cur
        if isinstance(cur, MissingMandatoryValue):
            key = getattr(cur, "full_key", None) or "a value"
            return ConfigError(f"{key}=... is required here (it has no default)")
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
