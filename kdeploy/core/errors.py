"""Errors kdeploy reports to users: one class per kind, each with its own exit code.

Every error says *what* went wrong, *where* (a file, a line, a flag) and *how to fix it*.
The CLI prints them without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class KdeployError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 1
    kind = "error"

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def render(self) -> str:
        lines = [f"{self.kind}: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.render()


class ProfileError(KdeployError):
    exit_code = 3
    kind = "profile error"


class ModelError(KdeployError):
    exit_code = 4
    kind = "model error"


class DataError(KdeployError):
    exit_code = 5
    kind = "data error"


class RunDirError(KdeployError):
    """The run directory is unusable: wrong profile, corrupted artifact, unwritable."""

    exit_code = 6
    kind = "run directory error"


class StageError(KdeployError):
    exit_code = 7
    kind = "stage error"


class BudgetError(KdeployError):
    """verify measured the model and at least one budget of the profile was missed."""

    exit_code = 8
    kind = "budget missed"


class DependencyError(KdeployError):
    exit_code = 9
    kind = "missing dependency"


class ExportError(KdeployError):
    exit_code = 10
    kind = "export error"


class HandOff(KdeployError):
    """The host did what it can; the next stage must run on the target device.

    Not a failure: the finished stages are kept, and the message says which command to run
    on the target. A distinct exit code lets scripts tell it apart from an error.
    """

    exit_code = 11
    kind = "stopped before"


class UsageError(KdeployError):
    """Conflicting or invalid command-line flags."""

    exit_code = 2
    kind = "usage error"


class InternalError(KdeployError):
    """Not the user's fault: an unexpected exception (a bug). The traceback goes to a file."""

    exit_code = 1
    kind = "internal error"


class Interrupted(KdeployError):
    exit_code = 130
    kind = "interrupted"
