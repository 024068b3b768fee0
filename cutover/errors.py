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


class PhaseError(CutoverError):
    """The operation is not allowed in the table's current phase."""

    exit_code = 5


class ConcurrentChange(CutoverError):
    """Someone else changed the table's state while this operation ran; rerun it."""

    exit_code = 6


class SchemaDrift(CutoverError):
    """The database table does not match its spec."""

    exit_code = 7


class GateRefused(CutoverError):
    """A phase transition without a passing validation report of the table's current data."""

    exit_code = 8
