"""The one exception type users see.

Every error caused by input (a recipe, a corpus, a run directory, a command-line argument) is an
:class:`NmtError`: the CLI prints its message and exits with status 2, without a traceback. A message
names the file, line or key at fault and says what to do about it.
"""
from __future__ import annotations


class NmtError(Exception):
    """An input problem the user can fix; the message says where and how."""

    exit_code = 2


class ConfigError(NmtError):
    """The recipe (or a ``--set`` override) is invalid."""

    def __init__(self, problems: list[str] | str, source: str | None = None, what: str = "recipe"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid {what} {source}" if source else f"invalid {what}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}:\n{lines}")


class DataError(NmtError):
    """A corpus file is missing, malformed or empty after filtering."""


class CheckpointError(NmtError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""
