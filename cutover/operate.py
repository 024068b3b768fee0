"""Running transitions in this process: what ``cutover plan/advance/rollback`` use.

The in-process ``Runner`` skips work that would change nothing, so that repeating a command (or
running it from several processes at once) is cheap and converges: the final sync is skipped when
the last sync already merged this exact CSV and nothing happened since, and validation reuses the
latest report when the gate would accept it as it is.
"""

from __future__ import annotations

from pathlib import Path

from cutover import backup as backup_core, gate, phases, reconcile, report, state, sync, transitions, validate
from cutover.csvstore import CsvStore
from cutover.db import Database
from cutover.errors import CutoverError
from cutover.outbox import Outbox
from cutover.settings import Settings
from cutover.spec import TableSpec


def outbox(settings: Settings) -> Outbox:
    return Outbox(settings.home / "outbox.sqlite3")


def archive_dir(settings: Settings) -> Path:
    return settings.data_dir / "archive"


def context(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str) -> transitions.Context:
    return transitions.Context(db=db, spec=specs[table], specs=specs, csv_path=settings.csv_path(table),
                               archive_dir=archive_dir(settings), settings=settings)


def current_state(db: Database, table: str) -> state.TableState:
    from cutover import bootstrap

    def read(conn):
        if not bootstrap.is_bootstrapped(conn):
            return state.TableState(table, None, 0, 0)
        return state.get_state(conn, table)

    return db.run(read, what=f"read the state of {table}")


def sync_needed(db: Database, spec: TableSpec, csv_path: Path) -> bool:
    """False when a sync would change nothing: the last successful sync merged this very file under
    the same basis (spec, parents' data — a parent's change can make an orphan loadable), and the
    table's data has not changed since (a phase transition does not count: it changes no row). The
    same rule as ``cutover.unchanged``, without recording a run."""
    from cutover.unchanged import still_merged

    def merged_sha(conn) -> str | None:
        from cutover import bootstrap

        if not bootstrap.is_bootstrapped(conn):
            return None
        row = still_merged(conn, spec, state.get_state(conn, spec.name))
        return row[1] if row else None

    sha = db.run(merged_sha, what=f"last sync of {spec.name}")
    return not (sha and Path(csv_path).exists() and sha == gate.file_sha256(csv_path))


def run_sync(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str, *, actor: str):
    csv_path = settings.csv_path(table)
    if not sync_needed(db, specs[table], csv_path):
        return None
    plan = sync.plan_sync(specs[table], specs, csv_path, rejects_dir=settings.rejects_dir,
                          batch_bytes=settings.batch_bytes, mass_delete_threshold=settings.mass_delete_threshold,
                          actor=actor, diff_index_mb=settings.diff_index_mb)
    return sync.run_sync(db, plan, workers=settings.workers)


def current_report(db: Database, table: str, csv_path: Path) -> report.Report | None:
    """The latest report, if the gate would accept it now."""
    def read(conn):
        latest = report.latest(conn, table)
        if latest is None:
            return None
        sha = gate.file_sha256(csv_path) if latest.csv_sha256 and Path(csv_path).exists() else None
        ok = not gate.reasons_to_refuse(state.get_state(conn, table), latest, sha)
        return latest if ok else None

    return db.run(read, what=f"latest report of {table}")


def run_validation(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str, *,
                   reuse: bool = True, actor: str = "cli") -> report.Report:
    if reuse and (latest := current_report(db, table, settings.csv_path(table))) is not None:
        return latest
    plan = validate.plan_validation(specs[table], specs, settings.csv_path(table), rejects_dir=settings.rejects_dir,
                                    batch_bytes=settings.batch_bytes, suites_dir=settings.expectations_dir,
                                    reports_dir=settings.reports_dir, actor=actor,
                                    keep_csv_digests=settings.keep_csv_digests)
    return validate.validate_table(db, plan, workers=settings.workers)


def drain_outbox(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str) -> int:
    return reconcile.drain(db, specs[table], CsvStore(settings.csv_path(table), specs[table]), outbox(settings))


def backup(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str) -> backup_core.BackupResult:
    """Bring the CSV of a promoted table up to date from the change log (PhaseError otherwise)."""
    store = CsvStore(settings.csv_path(table), specs[table])
    return db.run(lambda conn: backup_core.back_up(conn, specs[table], store), what=f"back up {table}")


def runner(settings: Settings, db: Database, specs: dict[str, TableSpec], *, approve_as: str | None,
           reason: str = "", actor: str = "cli") -> transitions.Runner:
    def approve(plan: phases.TransitionPlan, rep: report.Report | None) -> transitions.Approval:
        if not approve_as:
            raise CutoverError(f"promoting {plan.table} needs an approver: --approve-as NAME")
        return transitions.Approval(True, approve_as, reason)

    return transitions.Runner(
        sync=lambda t: run_sync(settings, db, specs, t, actor=actor),
        validate=lambda t: run_validation(settings, db, specs, t, actor=actor),
        drain_outbox=lambda t: drain_outbox(settings, db, specs, t),
        approve=approve)


def advance(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str, *,
            approve_as: str | None = None, reason: str = "", actor: str = "cli", to: str | None = None
            ) -> transitions.TransitionResult:
    """One phase forward; with ``to``, only if that is the next phase (so a repeated or concurrent
    "promote" never turns into a deprecation)."""
    plan = phases.plan_advance(current_state(db, table))
    if to is not None and plan.to_phase != to:
        raise phases.PlanError(f"{table} is in phase {plan.from_phase}: its next phase is {plan.to_phase}, not {to}")
    if plan.needs_approval and not approve_as:  # say so before doing any work
        raise CutoverError(f"promoting {table} needs an approver: --approve-as NAME")
    return transitions.execute(context(settings, db, specs, table), plan,
                               runner(settings, db, specs, approve_as=approve_as, reason=reason, actor=actor),
                               actor=actor, reason=reason)


def rollback(settings: Settings, db: Database, specs: dict[str, TableSpec], table: str, *, drop: bool = False,
             reason: str = "", actor: str = "cli") -> transitions.TransitionResult:
    plan = phases.plan_rollback(current_state(db, table), drop=drop)
    return transitions.execute(context(settings, db, specs, table), plan,
                               runner(settings, db, specs, approve_as=None, actor=actor), actor=actor, reason=reason)
