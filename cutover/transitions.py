"""Executing a ``TransitionPlan`` (see ``cutover.phases``).

Guarantees, whoever runs it (the CLI in-process, or a Prefect flow):

- the ``Locked`` part runs in ONE transaction under the table's advisory lock (the lock syncs and
  other transitions take too); it first re-reads the table and refuses (``ConcurrentChange``) if
  the phase is no longer the plan's, or — for a plan with no gate — the version moved. A gated
  plan's version check is the gate's: the report must be about the current version. So of ten
  concurrent promotions exactly one commits; the others are refused with the reason;
- a forward transition commits only with a passing report of the current data (``cutover.gate``),
  and its history row names that report and the approver;
- steps that write files (backup, archive, restore) run before the commit and are idempotent, so a
  transition that fails after them can simply be run again; the live CSV is removed only after
  a deprecation has committed.

Long-running steps (sync, validate, drain the outbox, approval) are delegated to a ``Runner``, so
that flows can run them as tasks and subflows (and pause for the UI form) while the CLI runs them
in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from cutover import archive, backup, baseline, ddl, digest_memo, gate, phases, report, state
from cutover.csvstore import CsvStore
from cutover.db import Database
from cutover.errors import ConcurrentChange, CutoverError
from cutover.settings import Settings
from cutover.spec import TableSpec

log = logging.getLogger("cutover.transitions")


@dataclass(frozen=True)
class Approval:
    approved: bool
    approver: str
    reason: str = ""
    outcome: str = "approved"  # approved | rejected | timed_out


@dataclass(frozen=True)
class Runner:
    """How the executor performs the long-running steps, for one table."""

    sync: Callable[[str], object]
    validate: Callable[[str], report.Report]
    drain_outbox: Callable[[str], int]
    approve: Callable[[phases.TransitionPlan, report.Report | None], Approval]


@dataclass(frozen=True)
class TransitionResult:
    table: str
    from_phase: str | None
    to_phase: str | None
    outcome: str  # done | rejected | timed_out
    report_id: str | None  # the report that allowed it
    parity_report_id: str | None  # the check after a rollback
    parity_passed: bool | None
    approver: str | None
    duration_s: float
    archive: str | None = None
    uploaded: list[str] | None = None  # Supabase Storage objects of the archive, when configured

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    db: Database
    spec: TableSpec
    specs: dict[str, TableSpec]
    csv_path: Path
    archive_dir: Path
    settings: Settings | None = None  # for the optional upload of a deprecation's archive


def _lock_writes(conn: psycopg.Connection, spec: TableSpec) -> None:
    # EXCLUSIVE: reads go on, every write (the application's, a sync's) waits for the commit.
    conn.execute(psycopg.sql.SQL("lock table {} in exclusive mode").format(ddl.target(spec)))


def _locked(conn: psycopg.Connection, ctx: Context, plan: phases.TransitionPlan, steps: tuple[phases.Step, ...], *,
            actor: str, reason: str, started: float, report_id: str | None) -> dict:
    spec = ctx.spec
    state.table_lock(conn, spec.name)
    current = state.get_state(conn, spec.name, for_update=True)
    if current.phase != plan.from_phase:
        raise ConcurrentChange(f"{spec.name} is now in phase {current.phase}, not {plan.from_phase}: another"
                               " transition finished first; nothing was changed")
    if not any(isinstance(s, phases.Gate) for s in steps) and current.version != plan.expected_version:
        raise ConcurrentChange(f"{spec.name} changed (version {plan.expected_version} → {current.version}) since"
                               " the plan was made; nothing was changed — plan again")
    out: dict = {}
    for step in steps:
        if isinstance(step, phases.Gate):
            allowed = gate.check(conn, spec.name, ctx.csv_path)
            report_id = out["report_id"] = allowed.report_id
        elif isinstance(step, phases.BlockWrites):
            _lock_writes(conn, spec)
        elif isinstance(step, phases.ChangeCapture):
            for stmt in ddl.change_capture(spec) if step.install else ddl.drop_change_capture(spec):
                conn.execute(stmt)
        elif isinstance(step, phases.AppWrites):
            for stmt in ddl.write_policies(spec, ctx.specs) if step.install else ddl.drop_write_policies(spec):
                conn.execute(stmt)
        elif isinstance(step, phases.MarkBackup):
            backup.set_mark(conn, spec.name, backup.latest_change(conn, spec.name))
        elif isinstance(step, (phases.BackupToCsv, phases.ApplyChangesToCsv)):
            out["backup"] = backup.apply_changes(conn, spec, CsvStore(ctx.csv_path, spec)).as_dict()
        elif isinstance(step, phases.ArchiveCsv):
            reports = [r[0] for r in conn.execute(
                "select report_id from cutover.validation_reports where table_name = %s order by created_at",
                (spec.name,))]
            manifest_path, _ = archive.archive_csv(ctx.csv_path, ctx.archive_dir, spec,
                                                   history=state.history(conn, spec.name), report_ids=reports)
            out["archive"] = str(manifest_path)
        elif isinstance(step, phases.DropMirror):
            children = [s.name for s in ctx.specs.values() if spec.name in s.parents
                        and conn.execute("select to_regclass(%s)", (s.qualified,)).fetchone()[0]]
            if children:
                raise CutoverError(f"cannot drop {spec.name}: {', '.join(children)} still refer to it; roll them"
                                   " back with --drop first")
            conn.execute(psycopg.sql.SQL("drop table if exists {}").format(ddl.target(spec)))
        elif isinstance(step, phases.SetPhase):
            state.set_phase(conn, spec.name, plan.from_phase, step.to_phase, actor=actor, reason=reason,
                            started_at=datetime.fromtimestamp(started, timezone.utc), report_id=report_id)
        else:
            raise AssertionError(f"step {step} cannot run inside the transaction")
    return out


def _backup_outside(ctx: Context) -> dict:
    def step(conn):
        return backup.apply_changes(conn, ctx.spec, CsvStore(ctx.csv_path, ctx.spec)).as_dict()

    return ctx.db.run(step, what=f"back up {ctx.spec.name} to its CSV")


def _restore(ctx: Context) -> str:
    manifest = archive.latest_manifest(ctx.archive_dir, ctx.spec.name)
    if manifest is None:
        raise CutoverError(f"no archive of {ctx.spec.name} under {ctx.archive_dir}: cannot restore its CSV")
    with CsvStore(ctx.csv_path, ctx.spec).locked():  # no application write may interleave with the restore
        archive.restore_csv(manifest, ctx.csv_path)
    return str(manifest)


def execute(ctx: Context, plan: phases.TransitionPlan, runner: Runner, *, actor: str, reason: str = ""
            ) -> TransitionResult:
    started = time.time()
    rep: report.Report | None = None
    approval: Approval | None = None
    after: report.Report | None = None
    archived = uploaded = None
    if ctx.settings is not None and any(isinstance(s, phases.Locked) and any(
            isinstance(i, phases.ArchiveCsv) for i in s.steps) for s in plan.steps):
        archive.upload_target(ctx.settings)  # half-configured upload: refuse before anything happens
    for step in plan.steps:
        if isinstance(step, phases.SyncFromCsv):
            runner.sync(plan.table)
        elif isinstance(step, phases.DrainOutbox):
            runner.drain_outbox(plan.table)
        elif isinstance(step, phases.BackupToCsv):
            _backup_outside(ctx)
        elif isinstance(step, phases.Validate):
            rep = runner.validate(plan.table)
        elif isinstance(step, phases.RequireApproval):
            approval = runner.approve(plan, rep)
            if not approval.approved:
                _record_refusal(ctx, plan, approval, rep, started)
                return TransitionResult(plan.table, plan.from_phase, plan.from_phase, approval.outcome,
                                        rep.report_id if rep else None, None, None, approval.approver,
                                        round(time.time() - started, 3))
        elif isinstance(step, phases.RestoreCsv):
            archived = _restore(ctx)
        elif isinstance(step, phases.Locked):
            who = f"{actor} (approved by {approval.approver})" if approval else actor
            why = "; ".join(x for x in (reason, approval.reason if approval else "") if x)
            out = ctx.db.run(lambda conn: _locked(conn, ctx, plan, step.steps, actor=who, reason=why,
                                                  started=started, report_id=rep.report_id if rep else None),
                             what=f"transition {plan.table} to {plan.to_phase}")
            archived = out.get("archive", archived)
            if "report_id" in out and rep is not None and out["report_id"] != rep.report_id:
                log.info("%s: the gate used report %s", plan.table, out["report_id"])
        elif isinstance(step, phases.RemoveCsv):
            if archived and ctx.settings is not None:
                manifest = archive.read_manifest(Path(archived))
                uploaded = archive.upload(Path(archived).parent / manifest.archive, Path(archived), ctx.settings)
            with CsvStore(ctx.csv_path, ctx.spec).locked():
                ctx.csv_path.unlink(missing_ok=True)
            if ctx.settings is not None:  # the last synced copy of the CSV goes with it, and its kept digests
                baseline.discard(plan.table, ctx.settings.rejects_dir)
                digest_memo.forget(digest_memo.path_for(ctx.settings.rejects_dir, plan.table))
        elif isinstance(step, phases.CheckParity):
            after = runner.validate(plan.table)
        else:
            raise AssertionError(f"step {step} must run inside Locked")
    return TransitionResult(
        plan.table, plan.from_phase, plan.to_phase, "done", rep.report_id if rep else None,
        after.report_id if after else None, (after.parity or {}).get("passed") if after else None,
        approval.approver if approval else None, round(time.time() - started, 3), archived, uploaded)


def _record_refusal(ctx: Context, plan: phases.TransitionPlan, approval: Approval, rep: report.Report | None,
                    started: float) -> None:
    def step(conn):
        state.append_history(conn, plan.table, plan.from_phase, plan.from_phase, actor=approval.approver,
                             reason=f"promotion {approval.outcome}: {approval.reason}".rstrip(": "),
                             started_at=datetime.fromtimestamp(started, timezone.utc),
                             report_id=rep.report_id if rep else None, outcome=approval.outcome)

    ctx.db.run(step, what=f"record the {approval.outcome} promotion of {plan.table}")
