"""The phase machine, as plain data: what a transition will do, planned with no I/O.

    (none) → mirror → dual_write → promoted → deprecated        forward: ``advance``
    (none) ← mirror ← dual_write ← promoted ← deprecated        back:    ``rollback``

``plan_advance`` / ``plan_rollback`` return a ``TransitionPlan``: the ordered steps a transition
takes and what it requires, built from the table's current state alone. Nothing here touches a
database or a file; ``cutover.transitions`` executes a plan (operations apart from their execution,
as alembic's ops/toimpl). Printing a plan (``cutover plan``) shows exactly what will run.

Steps run in order. The ``Locked`` step groups the steps that run in ONE transaction under the
table's advisory lock, after the optimistic version check; steps before it prepare (sync,
validate, approval), steps after it run once the transition has committed (parity check of a
rollback, removing the archived CSV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cutover.errors import PhaseError
from cutover.state import PHASES, TableState

FORWARD = {None: "mirror", "mirror": "dual_write", "dual_write": "promoted", "promoted": "deprecated"}
BACK = {v: k for k, v in FORWARD.items()}


class PlanError(PhaseError):
    """No such transition from the table's current phase."""


@dataclass(frozen=True)
class Step:
    def describe(self) -> str:  # pragma: no cover - every step overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class SyncFromCsv(Step):
    def describe(self) -> str:
        return "sync the CSV into the table (the CSV is still the source of truth)"


@dataclass(frozen=True)
class DrainOutbox(Step):
    def describe(self) -> str:
        return "repair every dual write whose Supabase half failed (drain the outbox)"


@dataclass(frozen=True)
class BackupToCsv(Step):
    def describe(self) -> str:
        return "bring the CSV backup up to date from the change log"


@dataclass(frozen=True)
class Validate(Step):
    def describe(self) -> str:
        return "validate: suites on CSV and table, exact parity, security → a report"


@dataclass(frozen=True)
class RequireApproval(Step):
    def describe(self) -> str:
        return "an operator approves (Prefect UI form, or --approve-as on the CLI)"


@dataclass(frozen=True)
class Gate(Step):
    def describe(self) -> str:
        return "gate: the latest report passed and is about the current data"


@dataclass(frozen=True)
class BlockWrites(Step):
    def describe(self) -> str:
        return "block writes to the table until the transition commits (reads go on)"


@dataclass(frozen=True)
class ChangeCapture(Step):
    install: bool

    def describe(self) -> str:
        return ("log every write to the table in cutover.change_log" if self.install
                else "stop logging writes to the table")


@dataclass(frozen=True)
class AppWrites(Step):
    install: bool

    def describe(self) -> str:
        return ("let agents write their own rows (RLS write policies)" if self.install
                else "remove the agents' write policies (the table is a read-only mirror again)")


@dataclass(frozen=True)
class MarkBackup(Step):
    def describe(self) -> str:
        return "record the change-log position up to which the CSV holds every write"


@dataclass(frozen=True)
class ApplyChangesToCsv(Step):
    def describe(self) -> str:
        return "apply every change made in the table since promotion to the CSV"


@dataclass(frozen=True)
class ArchiveCsv(Step):
    def describe(self) -> str:
        return "archive the CSV (gzip, sha256 manifest with spec, history and reports) under data/archive"


@dataclass(frozen=True)
class RemoveCsv(Step):
    def describe(self) -> str:
        return "remove the live CSV (it is archived and no longer written)"


@dataclass(frozen=True)
class RestoreCsv(Step):
    def describe(self) -> str:
        return "restore the CSV from the latest archive, verifying its sha256"


@dataclass(frozen=True)
class DropMirror(Step):
    def describe(self) -> str:
        return "drop the mirror table"


@dataclass(frozen=True)
class SetPhase(Step):
    to_phase: str | None

    def describe(self) -> str:
        return f"set the phase to {self.to_phase or '(none)'} and append the history row"


@dataclass(frozen=True)
class Locked(Step):
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return "in one transaction, under the table's lock, if the table is still at the planned version:"


@dataclass(frozen=True)
class CheckParity(Step):
    def describe(self) -> str:
        return "validate afterwards: the rolled-back phase must be in exact parity"


@dataclass(frozen=True)
class TransitionPlan:
    table: str
    from_phase: str | None
    to_phase: str | None
    expected_version: int
    steps: tuple[Step, ...]
    rollback: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_approval(self) -> bool:
        return any(isinstance(s, RequireApproval) for s in self.steps)

    def lines(self) -> list[str]:
        out = [f"{'rollback' if self.rollback else 'advance'} {self.table}: {self.from_phase or '(none)'} → "
               f"{self.to_phase or '(none)'} (at version {self.expected_version})"]
        n = 0
        for step in self.steps:
            n += 1
            out.append(f"  {n}. {step.describe()}")
            for inner in getattr(step, "steps", ()):
                out.append(f"       - {inner.describe()}")
        out += [f"  note: {note}" for note in self.notes]
        return out

    def as_dict(self) -> dict:
        def step(s: Step) -> dict:
            d = {"step": type(s).__name__, "does": s.describe()}
            if isinstance(s, Locked):
                d["steps"] = [step(i) for i in s.steps]
            return d

        return {"table": self.table, "from": self.from_phase, "to": self.to_phase, "rollback": self.rollback,
                "expected_version": self.expected_version, "needs_approval": self.needs_approval,
                "steps": [step(s) for s in self.steps], "notes": list(self.notes)}


def plan_advance(current: TableState) -> TransitionPlan:
    """The next forward transition. none → mirror is the first full load (the mirror flow), not a plan."""
    if current.phase is None:
        raise PlanError(f"{current.table} is not mirrored yet: run `cutover sync --table {current.table}` "
                        "(or the mirror flow) first")
    if current.phase == "deprecated":
        raise PlanError(f"{current.table} is deprecated: there is no phase after it")
    to = FORWARD[current.phase]
    steps: tuple[Step, ...]
    if to == "dual_write":
        steps = (SyncFromCsv(), Validate(), Locked((Gate(), ChangeCapture(True), AppWrites(True), SetPhase(to))))
    elif to == "promoted":
        steps = (DrainOutbox(), SyncFromCsv(), Validate(), RequireApproval(),
                 Locked((BlockWrites(), Gate(), MarkBackup(), SetPhase(to))))
    else:  # deprecated
        steps = (BackupToCsv(), Validate(),
                 Locked((BlockWrites(), Gate(), BackupToCsv(), ArchiveCsv(), SetPhase(to))), RemoveCsv())
    return TransitionPlan(current.table, current.phase, to, current.version, steps)


def plan_rollback(current: TableState, *, drop: bool = False) -> TransitionPlan:
    """One step back. Never gated (it is the way out), never loses a write."""
    if current.phase is None:
        raise PlanError(f"{current.table} has no phase to roll back from")
    to = BACK[current.phase]
    notes: tuple[str, ...] = ()
    if current.phase == "deprecated":
        steps = (RestoreCsv(), Locked((SetPhase(to),)), CheckParity())
    elif current.phase == "promoted":
        steps = (Locked((BlockWrites(), ApplyChangesToCsv(), SetPhase(to))), CheckParity())
    elif current.phase == "dual_write":
        steps = (DrainOutbox(), Locked((AppWrites(False), ChangeCapture(False), SetPhase(to))), CheckParity())
    else:  # mirror → none
        inner: tuple[Step, ...] = (DropMirror(), SetPhase(None)) if drop else (SetPhase(None),)
        steps = (Locked(inner),)
        notes = ("the CSV is left untouched",) + (() if drop else ("the mirror table is kept (use --drop to drop it)",))
    assert current.phase in PHASES
    return TransitionPlan(current.table, current.phase, to, current.version, steps, rollback=True, notes=notes)
