"""The errors cutover reports to people. Each carries the CLI exit code it maps to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class CutoverError(Exception):
    exit_code = 1


@dataclass
class StructuralError(CutoverError):
    """The file as a whole cannot be read as the table's CSV; nothing is applied."""

    path: Path
    message: str
    line: int | None = None
    column: str | int | None = None
    exit_code = 2

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}"
        if self.column is not None:
            where += f": column {self.column}"
        return f"{where}: {self.message}; nothing was applied"


class MassDeleteRefused(CutoverError):
    exit_code = 3


class DatabaseUnavailable(CutoverError):
    exit_code = 4


class PoolExhausted(DatabaseUnavailable):
    """Every connection of this process's pool stayed busy for the pool's whole timeout: more concurrent
    work than ``CUTOVER_POOL_MAX`` allows. The database itself answers, so the circuit breaker does not
    count it (``Database.run`` retries it, like a transient error)."""


class PoolUnreachable(DatabaseUnavailable):
    """The pool could not open a connection within its timeout; the message carries the server's reason
    (down, or "too many clients already")."""


class StagingLost(DatabaseUnavailable):
    """The database restarted (crashed) while a sync ran: crash recovery empties UNLOGGED tables, so
    rows its batches had staged are gone. Nothing was applied; a rerun (``cutover sync`` does it once
    by itself) stages the file again."""


class WriteFailed(CutoverError, OSError):
    """A file could not be written (disk full, read-only filesystem, no permission). It is still an
    ``OSError`` (``errno``, ``filename``) for callers that catch those; the message names the file."""

    def __init__(self, path: Path | str, errno: int | None, reason: str, *, failed_path: str | None = None,
                 outcome: str = "it was left as it was"):
        super().__init__(errno, reason, str(path))
        self.failed_path = failed_path
        self.outcome = outcome

    def __reduce__(self):  # picklable (flows hand exceptions between processes)
        return (_write_failed, (self.filename, self.errno, self.strerror, self.failed_path, self.outcome))

    def __str__(self) -> str:
        where = f" ({self.failed_path})" if self.failed_path and str(self.failed_path) != self.filename else ""
        return f"cannot write {self.filename}: {self.strerror}{where}; {self.outcome}"


def _write_failed(path, errno, reason, failed_path, outcome) -> WriteFailed:
    return WriteFailed(path, errno, reason, failed_path=failed_path, outcome=outcome)


class PhaseError(CutoverError):
    """The operation is not allowed in the table's current phase."""

    exit_code = 5


class ConcurrentChange(CutoverError):
    """Someone else changed the table's state while this operation ran; rerun it."""

    exit_code = 6


class LockTimeout(ConcurrentChange):
    """A statement waited ``CUTOVER_LOCK_TIMEOUT_S`` for a lock another session held (a merge or
    transition of the same table, an application transaction) and gave up; nothing was done."""


class SchemaDrift(CutoverError):
    """The database table does not match its spec."""

    exit_code = 7


class GateRefused(CutoverError):
    """A phase transition without a passing validation report of the table's current data."""

    exit_code = 8
